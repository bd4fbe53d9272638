import MMCore
import MMSync

/// Where a runner's words live: logical word i is at word `i % 511` of page `i / 511`; the last
/// word of every page (its *lane*) belongs to the CPU threads that run beside the kernels, so
/// they read and write the very pages the device works on without racing its words.
struct SVMWordLayout: Sendable {
    static let wordsPerPage = 511
    let base: UInt64
    let pages: Int
    /// Logical words (every word but the lanes).
    var words: Int { pages * SVMWordLayout.wordsPerPage }
    @inline(__always) func address(_ i: Int) -> UInt64 {
        base + UInt64(i / SVMWordLayout.wordsPerPage) * pageSize + UInt64(i % SVMWordLayout.wordsPerPage) * 8
    }
    /// Page p's CPU lane (its last word).
    @inline(__always) func lane(_ p: Int) -> UInt64 { base + UInt64(p) * pageSize + UInt64(SVMWordLayout.wordsPerPage) * 8 }
}

/// CPU threads working on the same pages as the device while its kernels run (and between
/// them): thread t takes pages t, t + n, … and, pass after pass, reads its lane word of each
/// (it must hold what the thread last wrote), writes it one higher, and reads one word of the
/// page that the workload leaves unchanged (it must hold its value). Each access to a page
/// in device memory brings it back (`migrate_to_ram`); the device faults again for it.
final class SVMCPUCompanion: @unchecked Sendable {
    /// One thread's record; written by that thread only, read after it is joined.
    final class Tally: @unchecked Sendable {
        var increments: [Int: Int] = [:]
        var mismatches = 0
        var passes = 0
        var accesses = 0
    }
    private let stopFlag = AtomicCounter(0)
    private var threads: [ModelThread] = []
    private var cpus: [CPU] = []
    private let tallies: [Tally]
    private let layout: SVMWordLayout
    /// At most this many passes (a bound on the run's length under heavy thrashing).
    static let maxPasses = 64

    /// Starts `count` threads on their own CPUs of `process`. `stable(i)`: the value logical
    /// word i keeps for the whole run, or nil if the workload changes it.
    init(process: MMCore.Process, layout: SVMWordLayout, count: Int, stable: @escaping @Sendable (Int) -> UInt64?) {
        self.layout = layout
        tallies = (0..<count).map { _ in Tally() }
        cpus = (0..<count).map { _ in process.makeCPU() }
        let stop = stopFlag
        threads = (0..<count).map { t in
            let c = cpus[t], tally = tallies[t]
            return ModelThread.spawn(name: "svm-cpu-\(t)") {
                var pass = 0
                repeat {
                    for p in stride(from: t, to: layout.pages, by: count) {
                        let lane = layout.lane(p)
                        let mine = tally.increments[p, default: 0]
                        tally.accesses += 2
                        guard let v = try? c.load(lane, as: UInt64.self), v == UInt64(mine) else { tally.mismatches += 1; continue }
                        guard (try? c.store(lane, v &+ 1)) != nil else { tally.mismatches += 1; continue }
                        tally.increments[p] = mine + 1
                        let j = p * SVMWordLayout.wordsPerPage + (pass * 61 + t * 7) % SVMWordLayout.wordsPerPage
                        if let want = stable(j) {
                            tally.accesses += 1
                            if (try? c.load(layout.address(j), as: UInt64.self)) != want { tally.mismatches += 1 }
                        }
                    }
                    pass += 1
                } while stop.load() == 0 && pass < SVMCPUCompanion.maxPasses
                tally.passes = pass
            }
        }
    }

    /// Stops the threads after their current pass and joins them. Return: each page's lane
    /// value now expected (the increments made), wrong values seen, passes and accesses.
    func finish() -> (lanes: [Int], mismatches: Int, passes: Int, accesses: Int) {
        stopFlag.store(1)
        threads.forEach { $0.join() }
        threads = []
        cpus.forEach { $0.detach() }
        cpus = []
        var lanes = [Int](repeating: 0, count: layout.pages)
        for t in tallies { for (p, n) in t.increments { lanes[p] += n } }
        return (lanes, tallies.reduce(0) { $0 + $1.mismatches }, tallies.reduce(0) { $0 + $1.passes },
                tallies.reduce(0) { $0 + $1.accesses })
    }
}
