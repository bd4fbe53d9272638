import MMCore
import MMSync

/// The workloads `hmm svm`, the bench and the tests run end to end: data set up by the CPU, a
/// kernel (or rounds of kernels and CPU work) on the device, every word checked against a
/// reference model afterwards.
public enum SVMWorkloadKind: String, CaseIterable, Sendable {
    /// Every word read and written once (`SVMWorkload.stream`).
    case stream
    /// Rounds in which the device increments one word of every page and then the CPU another:
    /// each page bounces between CPU and device (thrashing under first touch).
    case pingpong
    /// Four engines' atomics and two CPU threads' atomic adds on one counter at once.
    case counter
    /// Each engine sums words at seeded random indices and stores its sum.
    case gather
}

/// One workload under one policy: what the device did and whether the data came out right.
public struct SVMRunResult: Sendable {
    public let workload: SVMWorkloadKind
    public let policy: String
    public let pages: Int
    /// Words that differ from the reference model (0 for a right run).
    public let mismatches: Int
    public let counters: [(String, Int)]
    public let virtualNanoseconds: UInt64
    public let wallNanoseconds: UInt64
    public let invariantProblems: [String]
    /// The working set's first address, and the device's event log if tracing was on.
    public let base: UInt64
    public let trace: SVMTrace?
    public func counter(_ name: String) -> Int { counters.first { $0.0 == name }?.1 ?? 0 }
}

public enum SVMRunner {
    /// Runs `kind` over `pages` pages on a fresh machine (`machineMiB` of RAM) with a device of
    /// `deviceMiB` under `policy` on `engines` engines; `rounds` for ping-pong. Checks every
    /// word, the device's page table against the CPU's, and the machine's invariants.
    /// Errors: EINVAL for sizes out of range; ENOMEM when the machine is too small.
    public static func run(_ kind: SVMWorkloadKind, policy: SVMPolicy, pages: Int, engines: Int = 4, rounds: Int = 4,
                           machineMiB: UInt64 = 256, deviceMiB: UInt64 = 64, costs: SVMCosts = SVMCosts(),
                           trace: SVMTrace? = nil) throws -> SVMRunResult {
        guard pages > 0, engines > 0, engines <= 64, rounds > 0 else { throw Errno.EINVAL }
        let machine = try Machine(memoryBytes: machineMiB << 20, devicePfnSpaceBytes: max(deviceMiB, 256) << 21)
        let process = try MMCore.Process(machine: machine)
        let cpu = process.makeCPU()
        let device = try SVMDevice(machine: machine, capacityBytes: deviceMiB << 20, policy: policy, costs: costs, trace: trace)
        defer { try? device.shutdown(); cpu.detach(); process.exit() }
        let space = try device.bind(process.mm)
        let a = try process.mmap(length: UInt64(pages) * pageSize, prot: .readWrite, flags: [.private, .anonymous])
        let words = pages * 512
        @Sendable func word(_ i: Int) -> UInt64 { a + UInt64(i) * 8 }
        for i in 0..<words { try cpu.store(word(i), UInt64(i) &* 2654435761) }
        let wall0 = monotonicNanoseconds()
        var virtual: UInt64 = 0
        var expected: (Int) -> UInt64 = { UInt64($0) &* 2654435761 }
        switch kind {
        case .stream:
            virtual = try device.launch(SVMWorkload.stream(base: a, words: words), on: space, engines: engines).wait().virtualNanoseconds
            expected = { SVMWorkload.stream(UInt64($0) &* 2654435761) }
        case .pingpong:
            for _ in 0..<rounds {
                let k = SVMKernel(name: "pingpong") { (e: SVMEngine) throws(SVMFatalFault) in
                    for p in stride(from: e.index, to: pages, by: e.count) { try e.store(word(p * 512), try e.load(word(p * 512)) &+ 1) }
                }
                virtual += try device.launch(k, on: space, engines: engines).wait().virtualNanoseconds
                for p in 0..<pages { try cpu.store(word(p * 512 + 1), try cpu.load(word(p * 512 + 1), as: UInt64.self) &+ 1) }
            }
            expected = { i in UInt64(i) &* 2654435761 &+ (i % 512 <= 1 ? UInt64(rounds) : 0) }
        case .counter:
            let adds = 1000
            let run = try device.launch(SVMWorkload.counter(address: a, adds: adds), on: space, engines: engines)
            let cpus = (0..<2).map { _ in process.makeCPU() }
            let threads = cpus.map { c in ModelThread.spawn(name: "svm-cpu-adds") { for _ in 0..<adds { _ = try? c.fetchAdd(a, 1) } } }
            virtual = try run.wait().virtualNanoseconds
            threads.forEach { $0.join() }
            cpus.forEach { $0.detach() }
            expected = { i in UInt64(i) &* 2654435761 &+ (i == 0 ? UInt64((engines + 2) * adds) : 0) }
        case .gather:
            // Engine e sums 256 words at indices drawn from seed e and stores the sum in word
            // e of the last page (which the gathers do not read).
            let reads = 256, limit = words - 512
            @Sendable func indices(_ e: Int) -> [Int] { var rng = SeededRNG(seed: UInt64(e) + 1); return (0..<reads).map { _ in Int.random(in: 0..<limit, using: &rng) } }
            let k = SVMKernel(name: "gather") { (e: SVMEngine) throws(SVMFatalFault) in
                var sum: UInt64 = 0
                for i in indices(e.index) { sum &+= try e.load(word(i)) }
                try e.store(word(limit + e.index), sum)
            }
            guard pages >= 2, engines <= 512 else { throw Errno.EINVAL }
            virtual = try device.launch(k, on: space, engines: engines).wait().virtualNanoseconds
            let sums = (0..<engines).map { e in indices(e).reduce(UInt64(0)) { $0 &+ UInt64($1) &* 2654435761 } }
            expected = { i in i >= limit && i < limit + engines ? sums[i - limit] : UInt64(i) &* 2654435761 }
        }
        let wall = monotonicNanoseconds() - wall0
        let problems = space.checkInvariants() + machine.checkInvariants()
        let counters = device.stats.snapshot // before the check's CPU reads bring pages back
        trace?.stop()
        var mismatches = 0
        for i in 0..<words where try cpu.load(word(i), as: UInt64.self) != expected(i) { mismatches += 1 }
        return SVMRunResult(workload: kind, policy: policy.name, pages: pages, mismatches: mismatches, counters: counters,
                            virtualNanoseconds: virtual, wallNanoseconds: wall, invariantProblems: problems, base: a, trace: trace)
    }

    /// The built-in policies by name.
    public static func policy(named name: String) -> SVMPolicy? {
        switch name {
        case "first-touch": SVMFirstTouchPolicy()
        case "remote-map": SVMRemoteMapPolicy()
        case "density-prefetch": SVMDensityPrefetchPolicy()
        case "thrashing-aware": SVMThrashingPolicy()
        default: nil
        }
    }
    public static let policyNames = ["first-touch", "remote-map", "density-prefetch", "thrashing-aware"]
}
