import MMCore
import MMSync

/// The workloads `hmm svm`, the bench and the tests run end to end: data set up by the CPU, a
/// kernel (or rounds of kernels and CPU work) on the device, every word checked against a
/// reference model afterwards. The data are logical words (`SVMWordLayout`: the last word of
/// each page is left to CPU threads running beside the kernels).
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
    /// A 3-point stencil: the second half of the words becomes the sums of each word of the
    /// first half and its neighbours.
    case stencil
    /// Breadth-first search over a generated graph (4 seeded edges per node), one kernel per
    /// level: the engines scan their nodes of the current level and label the unlabelled
    /// neighbours.
    case bfs
    /// C = A × B of m × m matrices of words (wrapping arithmetic), each engine computing
    /// 16 × 16 tiles of C from tiles of A and B copied to its own memory.
    case gemm
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
    /// CPU threads that ran beside the kernels, their passes over the pages and accesses.
    public var cpuThreads = 0
    public var cpuPasses = 0
    public var cpuAccesses = 0
    public func counter(_ name: String) -> Int { counters.first { $0.0 == name }?.1 ?? 0 }
}

public enum SVMRunner {
    /// Runs `kind` over `pages` pages on a fresh machine (`machineMiB` of RAM) with a device of
    /// `deviceMiB` under `policy` on `engines` engines; `rounds` for ping-pong. With
    /// `cpuThreads`, that many CPU threads read and write the same pages while the kernels run
    /// (`SVMCPUCompanion`). Checks every word, the device's page table against the CPU's, and
    /// the machine's invariants. Virtual time runs from the first kernel's launch to the last
    /// one's end, with what the device spent between kernels (CPU faults back) counted.
    /// Errors: EINVAL for sizes out of range; ENOMEM when the machine is too small; a kernel's
    /// fatal fault.
    public static func run(_ kind: SVMWorkloadKind, policy: SVMPolicy, pages: Int, engines: Int = 4, rounds: Int = 4,
                           cpuThreads: Int = 0, machineMiB: UInt64 = 256, deviceMiB: UInt64 = 64,
                           costs: SVMCosts = SVMCosts(), trace: SVMTrace? = nil, thp: Bool = false) throws -> SVMRunResult {
        guard pages > 0, engines > 0, engines <= 64, rounds > 0, (0...16).contains(cpuThreads) else { throw Errno.EINVAL }
        let machine = try Machine(memoryBytes: machineMiB << 20, devicePfnSpaceBytes: max(deviceMiB, 256) << 21)
        // THP "always": the workload's memory is THPs wherever a 2 MiB block fits, and the
        // device moves those blocks as 2 MiB device pages.
        if thp { machine.memory.thp.mode = .always }
        let process = try MMCore.Process(machine: machine)
        let device = try SVMDevice(machine: machine, capacityBytes: deviceMiB << 20, policy: policy, costs: costs, trace: trace)
        defer { try? device.shutdown(); process.exit() }
        let space = try device.bind(process.mm)
        return try runIn(kind, space: space, process: process, pages: pages, engines: engines, rounds: rounds,
                         cpuThreads: cpuThreads, checkInvariants: true, stopTrace: true)
    }

    /// Runs `kind` in `process` (bound to a device as `space`) over `pages` new pages, which
    /// are unmapped afterwards; the rest as the other `run`. With `checkInvariants` (the
    /// machine quiet but for this run), the device's table against the CPU's and the
    /// machine's invariants are checked after the kernels. The counters are the device's since
    /// it was opened. Errors: EINVAL for sizes out of range or a space of a dead process;
    /// ENOMEM; a kernel's fatal fault.
    public static func run(_ kind: SVMWorkloadKind, on space: SVMSpace, process: MMCore.Process, pages: Int, engines: Int = 4,
                           rounds: Int = 4, cpuThreads: Int = 0, checkInvariants: Bool = true) throws -> SVMRunResult {
        try runIn(kind, space: space, process: process, pages: pages, engines: engines, rounds: rounds, cpuThreads: cpuThreads,
                  checkInvariants: checkInvariants, stopTrace: false)
    }

    /// The run itself; with `stopTrace`, the device's trace stops before the check's CPU reads.
    private static func runIn(_ kind: SVMWorkloadKind, space: SVMSpace, process: MMCore.Process, pages: Int, engines: Int,
                              rounds: Int, cpuThreads: Int, checkInvariants: Bool, stopTrace: Bool) throws -> SVMRunResult {
        guard pages > 0, pages <= 1 << 20, engines > 0, engines <= 64, rounds > 0, (0...16).contains(cpuThreads),
              space.mm === process.mm, !process.mm.isDead else { throw Errno.EINVAL }
        let device = space.device
        let cpu = process.makeCPU()
        defer { cpu.detach() }
        let a = try process.mmap(length: UInt64(pages) * pageSize, prot: .readWrite, flags: [.private, .anonymous])
        defer { try? process.munmap(a, length: UInt64(pages) * pageSize) }
        let ctx = SVMRunContext(device: device, space: space, process: process, cpu: cpu,
                                layout: SVMWordLayout(base: a, pages: pages), engines: engines, rounds: rounds, cpuThreads: cpuThreads)
        defer { _ = ctx.stopCompanion() }
        for i in 0..<ctx.layout.words { try cpu.store(ctx.layout.address(i), SVMRunContext.initial(i)) }
        let wall0 = monotonicNanoseconds()
        let expected: (Int) -> UInt64
        switch kind {
        case .stream: expected = try ctx.stream()
        case .pingpong: expected = try ctx.pingpong()
        case .counter: expected = try ctx.counter()
        case .gather: expected = try ctx.gather()
        case .stencil: expected = try ctx.stencil()
        case .bfs: expected = try ctx.bfs()
        case .gemm: expected = try ctx.gemm()
        }
        ctx.end()
        let companion = ctx.stopCompanion()
        let wall = monotonicNanoseconds() - wall0
        let virtual = ctx.virtualNanoseconds
        // Access-counter notifications may still be in service after the kernels ended.
        device.waitIdle()
        let problems = checkInvariants ? space.checkInvariants() + process.machine.checkInvariants() : []
        let counters = device.stats.snapshot // before the check's CPU reads bring pages back
        if stopTrace { device.trace?.stop() }
        var mismatches = companion.mismatches
        for i in 0..<ctx.layout.words where try cpu.load(ctx.layout.address(i), as: UInt64.self) != expected(i) { mismatches += 1 }
        for p in 0..<pages where try cpu.load(ctx.layout.lane(p), as: UInt64.self) != UInt64(companion.lanes[p]) { mismatches += 1 }
        return SVMRunResult(workload: kind, policy: device.policy.name, pages: pages, mismatches: mismatches, counters: counters,
                            virtualNanoseconds: virtual, wallNanoseconds: wall, invariantProblems: problems, base: a,
                            trace: device.trace, cpuThreads: cpuThreads, cpuPasses: companion.passes, cpuAccesses: companion.accesses)
    }

    /// The built-in policies by name.
    public static func policy(named name: String) -> SVMPolicy? {
        switch name {
        case "first-touch": SVMFirstTouchPolicy()
        case "remote-map": SVMRemoteMapPolicy()
        case "density-prefetch": SVMDensityPrefetchPolicy()
        case "thrashing-aware": SVMThrashingPolicy()
        case "access-counters": SVMAccessCounterPolicy()
        default: nil
        }
    }
    public static let policyNames = ["first-touch", "remote-map", "density-prefetch", "thrashing-aware", "access-counters"]
}
