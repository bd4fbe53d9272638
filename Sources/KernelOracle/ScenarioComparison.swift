/// A scenario script run on the model and on the kernel (`hmm-oracle-runner` in the kernel
/// oracle's VM), compared command by command.
///
/// Both sides print one trace line per command, `FILE:LINE tN: COMMAND = RESULT`. The
/// comparison takes, in order, each command's `FILE:LINE` (file name only) and its result with
/// addresses and pids left out (they differ between the two machines): return values and
/// errnos, `cpages` and `faults`, loaded values, signals, pagemap states. The runner also checks
/// the script's expectations and reports the first that fails on the kernel.
public enum ScenarioComparison {
    /// One command's trace: where, and what it returned (normalized); `thread`: the `tN` of
    /// a thread of a `concurrent` block (0 outside), not compared.
    public struct TraceLine: Sendable, Equatable, CustomStringConvertible {
        public let location: String
        public let result: String
        public let thread: Int
        public init(location: String, result: String, thread: Int = 0) { self.location = location; self.result = result; self.thread = thread }
        public var description: String { "\(location) = \(result)" }
        public static func == (a: TraceLine, b: TraceLine) -> Bool { a.location == b.location && a.result == b.result }
    }

    /// A trace as compared: each command outside `concurrent` blocks by itself, in order; the
    /// commands of a block's threads (consecutive lines with N ≠ 0) as one group, compared as the
    /// set of their locations with repeats, whatever the order the threads ran them in and
    /// whatever they returned (that depends on the interleaving; each side checked the script's
    /// expectations of them).
    enum Item: Equatable {
        case line(TraceLine)
        case group([String])

        var location: String {
            switch self { case .line(let l): return l.location; case .group(let g): return g.first.map { "the threads at \($0)" } ?? "threads" }
        }
        var commands: Int { if case .group(let g) = self { return g.count }; return 1 }
        var result: String {
            switch self { case .line(let l): return l.result; case .group(let g): return "threads ran " + g.joined(separator: ", ") }
        }
    }

    static func items(_ lines: [TraceLine]) -> [Item] {
        var out: [Item] = []
        var group: [String] = []
        for l in lines {
            if l.thread != 0 { group.append(l.location); continue }
            if !group.isEmpty { out.append(.group(group.sorted())); group = [] }
            out.append(.line(l))
        }
        if !group.isEmpty { out.append(.group(group.sorted())) }
        return out
    }

    /// How the kernel's run of a script ended.
    public enum End: Sendable, Equatable {
        case done
        /// An expectation of the script failed on the kernel.
        case expectationFailed(String)
        /// A command the runner cannot run on a kernel (yet): where, and which.
        case unsupported(String)
        case skipped(String)
        /// The runner stopped on an error of its own, or printed nothing for the script.
        case broken(String)

        /// Which end line stands when a run printed several.
        var rank: Int {
            switch self {
            case .done: return 0
            case .skipped, .unsupported: return 1
            case .expectationFailed, .broken: return 2
            }
        }
    }

    public struct KernelScript: Sendable, Equatable {
        public var lines: [TraceLine] = []
        public var end: End = .broken(KernelScript.noEnd)
        var sawEnd = false
        /// A script whose run printed no end: the VM stopped in it (a kernel oops or panic
        /// ends the VM), or the runner died.
        public static let noEnd = "its run ended without an end line (the VM stopped here: a kernel oops or panic? see the kernel's console)"
        public init(lines: [TraceLine] = [], end: End = .broken(KernelScript.noEnd)) { self.lines = lines; self.end = end }
    }

    public enum Verdict: String, Sendable { case same, different, partial, skipped }

    public struct Result: Sendable, Equatable {
        public let file: String
        public let verdict: Verdict
        /// Commands compared.
        public let compared: Int
        public let note: String?
    }

    /// Parses `FILE:LINE tN: TEXT = RESULT` (with or without the leading `# `). Return: nil for
    /// anything else (the model's page-table lines, output of `print`, …).
    public static func traceLine(_ raw: String) -> TraceLine? {
        var s = Substring(raw)
        if s.hasPrefix("# ") { s = s.dropFirst(2) }
        guard let sep = s.firstRange(" = "), let colonT = s.firstRange(": ") else { return nil }
        let head = s[s.startIndex..<colonT.lowerBound]            // FILE:LINE tN
        guard let space = head.lastIndex(of: " "), head[head.index(after: space)...].hasPrefix("t"),
              let thread = Int(head[head.index(after: space)...].dropFirst()) else { return nil }
        let where_ = head[head.startIndex..<space]                  // FILE:LINE
        guard let colon = where_.lastIndex(of: ":"), Int(where_[where_.index(after: colon)...]) != nil else { return nil }
        let file = where_[where_.startIndex..<colon]
        let base = file.lastIndex(of: "/").map { file[file.index(after: $0)...] } ?? file
        return TraceLine(location: "\(base):\(where_[where_.index(after: colon)...])", result: normalize(String(s[sep.upperBound...])), thread: thread)
    }

    /// Addresses (hex numbers of 0x10000 and more) and pids are left out.
    static func normalize(_ result: String) -> String {
        var words = result.split(separator: " ", omittingEmptySubsequences: false).map(String.init)
        for i in words.indices {
            let w = words[i]
            if w.hasPrefix("0x"), let v = UInt64(w.dropFirst(2), radix: 16), v >= 0x10000 { words[i] = "ADDR" }
            if i > 0, words[i - 1] == "pid", Int(w) != nil { words[i] = "N" }
        }
        return words.joined(separator: " ")
    }

    /// The runner's output for several scripts, each after `@@SCRIPT NAME`.
    public static func parseRunner(_ text: String) -> [String: KernelScript] {
        var scripts: [String: KernelScript] = [:]
        var current: String? = nil
        for raw in text.utf8.split(separator: 0x0A, omittingEmptySubsequences: false) {
            let line = String(decoding: raw.last == 0x0D ? raw.dropLast() : raw, as: UTF8.self)
            if line.hasPrefix("@@SCRIPT ") { current = String(line.dropFirst(9)); scripts[current!] = KernelScript(); continue }
            guard let name = current else { continue }
            func after(_ p: String) -> String { String(line.dropFirst(p.count)) }
            // The first end line of the highest rank stands: threads go on after one of them
            // fails, so an unsupported command may follow the failed expectation that ended
            // the script; a process's own error comes before the runner's "it ended".
            var end: End? = nil
            if line == "@@DONE" { end = .done }
            else if line.hasPrefix("@@EXPECT ") { end = .expectationFailed(after("@@EXPECT ")) }
            else if line.hasPrefix("@@UNSUPPORTED ") { end = .unsupported(after("@@UNSUPPORTED ")) }
            else if line.hasPrefix("@@SKIP ") { end = .skipped(after("@@SKIP ")) }
            else if line.hasPrefix("@@ERROR ") { end = .broken(after("@@ERROR ")) }
            if let e = end {
                if !scripts[name]!.sawEnd || e.rank > scripts[name]!.end.rank { scripts[name]!.end = e }
                scripts[name]!.sawEnd = true
                continue
            }
            else if let t = traceLine(line) { scripts[name]!.lines.append(t) }
        }
        return scripts
    }

    /// Compares a script's model trace (`modelFailure`: nil when every expectation held) with
    /// the kernel's run of it.
    public static func compare(file: String, model: [TraceLine], modelFailure: String?, kernel: KernelScript?) -> Result {
        if let m = modelFailure { return Result(file: file, verdict: .different, compared: 0, note: "swift-hmm fails: \(m)") }
        guard let k = kernel else { return Result(file: file, verdict: .different, compared: 0, note: "no output from the kernel's run") }
        let modelItems = items(model), kernelItems = items(k.lines)
        func done(_ i: Int) -> Int { kernelItems[..<i].reduce(0) { $0 + $1.commands } }
        for (i, kl) in kernelItems.enumerated() {
            guard i < modelItems.count else {
                return Result(file: file, verdict: .different, compared: done(i), note: "the kernel ran \(kl.location) after swift-hmm's last command")
            }
            let m = modelItems[i]
            if m == kl { continue }
            // A run that stopped inside a concurrent block ran part of the model's group.
            if i == kernelItems.count - 1, k.end != .done, case .group(let kg) = kl, case .group(let mg) = m, isSubmultiset(kg, of: mg) { continue }
            return Result(file: file, verdict: .different, compared: done(i),
                          note: "at \(kl.location): swift-hmm \(m.location == kl.location ? "" : "(\(m.location)) ")\(m.result), kernel \(kl.result)")
        }
        let n = kernelItems.count, compared = done(n)
        switch k.end {
        case .done:
            if modelItems.count != n {
                return Result(file: file, verdict: .different, compared: compared, note: "swift-hmm ran \(modelItems.count - n) more commands, from \(modelItems[n].location)")
            }
            return Result(file: file, verdict: .same, compared: compared, note: nil)
        case .expectationFailed(let m):
            return Result(file: file, verdict: .different, compared: compared, note: "on the kernel, \(m)")
        case .unsupported(let what):
            return Result(file: file, verdict: .partial, compared: compared, note: "then not run on the kernel: \(what)")
        case .skipped(let at):
            return Result(file: file, verdict: .skipped, compared: compared, note: "skipped at \(at)")
        case .broken(let m):
            return Result(file: file, verdict: .different, compared: compared, note: "the kernel's run broke: \(m)")
        }
    }
}

extension ScenarioComparison {
    static func isSubmultiset(_ a: [String], of b: [String]) -> Bool {
        var counts: [String: Int] = [:]
        for x in b { counts[x, default: 0] += 1 }
        for x in a { counts[x, default: 0] -= 1; if counts[x]! < 0 { return false } }
        return true
    }
}

extension Substring {
    func firstRange(_ s: String) -> Range<Substring.Index>? {
        let n = s.count
        var i = startIndex
        while i < endIndex {
            if self[i...].hasPrefix(s) { return i..<index(i, offsetBy: n) }
            i = index(after: i)
        }
        return nil
    }
}
