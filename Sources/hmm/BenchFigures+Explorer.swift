import Explorer
import MMSync
import NativeBaselines

extension BenchSuite {
    /// The selftest `hmm_device_private.anon_teardown` (munmap racing a device read, ten
    /// rounds), self-contained: the explorer's throughput figure runs it.
    static let anonTeardownScript = """
        let NPG = 1024
        let SIZE = 4MiB
        process main
        open 0 -> fd
        repeat 10 as c {
          mmap SIZE prot=rw -> buf
          fill buf SIZE IDX+c
          concurrent {
            thread {
              sleep (c*7919)%32000
              munmap buf+SIZE/2 SIZE/2
            }
            thread {
              read fd buf NPG expect ret=0|-EFAULT cpages=NPG faults=1 mirror=IDX+c
            }
          }
          munmap buf SIZE
          invariants
        }
        """

    /// The explorer (issue 13). Steps per second of random-walk executions of anon_teardown
    /// (target: at least 100,000), beside the synchronization points per second the same
    /// script reaches natively (its steps over its native time). And one scheduling hand-off
    /// (two model threads, round-robin: a switch at every step) against a user-level switch of
    /// two contexts in one thread (`swapcontext`), target ≤ 5×.
    func explorerFigures() throws -> [BenchRow] {
        let script = BenchSuite.anonTeardownScript
        let body = { try exploredScript(source: script, name: "anon_teardown") }
        let executions = quick ? 1 : 5
        var rates: [Double] = [], native: [Double] = []
        for rep in 0..<executions {
            let t0 = monotonicNanoseconds()
            let e = Explorer.run(strategy: .random, seed: UInt64(rep), maxSteps: 10_000_000, body)
            let t = Double(monotonicNanoseconds() - t0) / 1e9
            if let f = e.failure { throw BenchError(description: "anon_teardown under the explorer: \(f)") }
            rates.append(Double(e.steps) / t)
            let n0 = monotonicNanoseconds()
            try body()
            native.append(Double(e.steps) / (Double(monotonicNanoseconds() - n0) / 1e9))
        }
        let r = spread(rates), n = spread(native)

        let switches = quick ? 20_000 : 200_000
        var handoff: [Double] = [], swap: [Double] = []
        for _ in 0..<(quick ? 1 : 5) {
            let t0 = monotonicNanoseconds()
            let e = Explorer.run(strategy: .roundRobin, seed: 0, maxSteps: 10 * switches) {
                let ts = (0..<2).map { i in
                    ModelThread.spawn(name: "t\(i)") { for _ in 0..<(switches / 2) { Sync.yieldPoint() } }
                }
                ts.forEach { $0.join() }
            }
            let t = Double(monotonicNanoseconds() - t0)
            if let f = e.failure { throw BenchError(description: "round-robin under the explorer: \(f)") }
            handoff.append(t / Double(e.steps))
            let s = nb_swapcontext_ns(switches)
            guard s > 0 else { throw BenchError(description: "swapcontext failed") }
            swap.append(s)
        }
        let h = spread(handoff), s = spread(swap)
        return [
            BenchRow(name: "explorer: steps/s, anon_teardown, random walk (vs native points/s)", unit: "steps/s", value: r.median,
                     baseline: n.median, spread: (r.min, r.max), kind: .floor, target: 100_000),
            BenchRow(name: "explorer: one hand-off (round-robin) vs swapcontext", unit: "ns", value: h.median, baseline: s.median,
                     spread: (h.min, h.max), kind: .time, target: 5),
        ]
    }
}
