import Devices
import MMCore
import MMSync

/// Counts the kinds of CPU page-table entries (for `--trace`).
struct EntryCensus: PageWalker {
    var present = 0, writable = 0, swap = 0
    var locksPTE: Bool { false }
    mutating func pteEntry(_ pte: EntryPointer, _ addr: UInt64, _ next: UInt64) -> WalkStep {
        let v = pte.load()
        if v.isPresent { present += 1; if v.isWrite { writable += 1 } } else if v.isSwap { swap += 1 }
        return .next
    }
}

extension ScenarioInterpreter {
    struct Census: Equatable {
        var cpu: [String: [Int]] = [:]      // process → [present, writable, non-present]
        var device: [String: Int] = [:]     // open device → entries
    }

    func pageTableCensus() -> Census {
        var c = Census()
        let (procs, devs) = state.withLock { (processes, devices) }
        for (name, p) in procs {
            var w = EntryCensus()
            // isDead under the lock: an exit frees the tables.
            let live = p.mm.mmapLock.withRead { () -> Bool in
                guard !p.mm.isDead else { return false }
                _ = p.mm.pageTable.walk(0, taskSize + pageSize, &w)
                return true
            }
            if live { c.cpu[name] = [w.present, w.writable, w.swap] }
        }
        for (name, d) in devs { c.device[name] = d.entryCount }
        return c
    }

    /// Prints what the last command changed in the CPU and device page tables.
    func traceChanges(_ before: Census, _ after: Census) {
        guard before != after else { return }
        var parts: [String] = []
        for name in Set(before.cpu.keys).union(after.cpu.keys).sorted() {
            let b = before.cpu[name] ?? [0, 0, 0], a = after.cpu[name] ?? [0, 0, 0]
            guard a != b else { continue }
            func delta(_ i: Int) -> String { let d = a[i] - b[i]; return d >= 0 ? "+\(d)" : "\(d)" }
            parts.append("cpu pt \(name): present \(a[0]) (\(delta(0))), writable \(a[1]) (\(delta(1))), non-present \(a[2]) (\(delta(2)))")
        }
        for name in Set(before.device.keys).union(after.device.keys).sorted() {
            let b = before.device[name] ?? 0, a = after.device[name] ?? 0
            if a != b { parts.append("device pt \(name): \(a) entries (\(a - b >= 0 ? "+" : "")\(a - b))") }
        }
        for p in parts { emit("    \(p)") }
    }
}
