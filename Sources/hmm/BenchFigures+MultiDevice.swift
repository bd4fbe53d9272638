import Devices
import MMCore
import MMSync

extension BenchSuite {
    /// Several devices on one address space (issue 17): the invalidation of a 2 MiB range that
    /// four dmirror devices mirror, each with a 50 µs TLB shootdown, waited for in the second
    /// pass of Linux 7.2's two-pass interval notifiers (the four shootdowns overlap) against
    /// waited for one after another in one-pass notifiers. Each timed invalidation is of a
    /// range every mirror holds (they read it again, untimed, before each).
    func multiDeviceFigures() throws -> [BenchRow] {
        let bytes: UInt64 = 2 << 20, latency: UInt64 = 50_000, batch = quick ? 10 : 40
        let (m, p, cpu, a) = try populated(bytes)
        defer { cpu.detach(); p.exit() }
        let module = DmirrorModule(machine: m)
        let mirrors = try (0..<4).map { try module.open(minor: $0, mm: p.mm) }
        defer { mirrors.forEach { $0.close() } }
        let pages = bytes >> pageShift
        let buffer = DmirrorBuffer(size: Int(bytes))
        for d in module.devices { d.invalidationLatencyNanoseconds = latency }
        let range = MMUNotifierRange(start: a, end: a + bytes, event: .clear)
        func microseconds(twoPhase: Bool) throws -> Double {
            for d in module.devices { d.twoPhaseInvalidation = twoPhase }
            var total = 0.0
            for _ in 0..<batch {
                for mirror in mirrors {
                    var c = DmirrorCmd(addr: a, npages: pages)
                    try mirror.ioctl(.read, &c, buffer: buffer)
                }
                total += seconds {
                    p.mm.notifiers.invalidateRangeStart(range)
                    p.mm.notifiers.invalidateRangeEnd(range)
                }
                guard mirrors.allSatisfy({ $0.entryCount == 0 }) else { throw BenchError(description: "a mirror kept entries of the invalidated range") }
            }
            return total / Double(batch) * 1e6
        }
        let finishes = module.devices.map { $0.finishPasses.load() }
        let (twoPhase, sequential) = try measurePair(reps, { try microseconds(twoPhase: true) }, { try microseconds(twoPhase: false) })
        let expected = reps * batch
        guard zip(module.devices, finishes).allSatisfy({ $0.finishPasses.load() - $1 == expected }) else {
            throw BenchError(description: "two-phase invalidations did not each run one finish pass per device")
        }
        return [
            BenchRow(name: "invalidate 2 MiB mirrored by 4 devices (50 µs shootdown each), two-phase vs sequential", unit: "µs",
                     value: twoPhase.median, baseline: sequential.median, spread: (twoPhase.min, twoPhase.max), kind: .time, target: 0.35),
        ]
    }
}
