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
            defer { threads.forEach { $0.join() }; cpus.forEach { $0.detach() } }
            virtual = try run.wait().virtualNanoseconds
            expected = { i in UInt64(i) &* 2654435761 &+ (i == 0 ? UInt64((engines + 2) * adds) : 0) }
        case .gather:
            // Engine e sums 256 words at indices drawn from seed e and stores the sum in word
            // e of the last page (which the gathers do not read).
            guard pages >= 2 else { throw Errno.EINVAL }
            let reads = 256, limit = words - 512
            @Sendable func indices(_ e: Int) -> [Int] { var rng = SeededRNG(seed: UInt64(e) + 1); return (0..<reads).map { _ in Int.random(in: 0..<limit, using: &rng) } }
            let k = SVMKernel(name: "gather") { (e: SVMEngine) throws(SVMFatalFault) in
                var sum: UInt64 = 0
                for i in indices(e.index) { sum &+= try e.load(word(i)) }
                try e.store(word(limit + e.index), sum)
            }
            virtual = try device.launch(k, on: space, engines: engines).wait().virtualNanoseconds
            let sums = (0..<engines).map { e in indices(e).reduce(UInt64(0)) { $0 &+ UInt64($1) &* 2654435761 } }
            expected = { i in i >= limit && i < limit + engines ? sums[i - limit] : UInt64(i) &* 2654435761 }
        case .stencil:
            let n = words / 2
            let k = SVMKernel(name: "stencil") { (e: SVMEngine) throws(SVMFatalFault) in
                var block = e.index
                while block * SVMWorkload.blockWords < n {
                    for i in (block * SVMWorkload.blockWords)..<min((block + 1) * SVMWorkload.blockWords, n) {
                        let l = try e.load(word(max(i - 1, 0))), c = try e.load(word(i)), r = try e.load(word(min(i + 1, n - 1)))
                        try e.store(word(n + i), l &+ c &+ r)
                    }
                    block += e.count
                }
            }
            virtual = try device.launch(k, on: space, engines: engines).wait().virtualNanoseconds
            let initial: (Int) -> UInt64 = { UInt64($0) &* 2654435761 }
            expected = { i in
                guard i >= n && i < 2 * n else { return initial(i) }
                let j = i - n
                return initial(max(j - 1, 0)) &+ initial(j) &+ initial(min(j + 1, n - 1))
            }
        case .bfs:
            // Edges at words [0, 4N), levels at [4N, 5N); unlabelled is UInt64.max.
            let degree = 4, nodes = words / (degree + 1)
            guard nodes >= 2 else { throw Errno.EINVAL }
            var rng = SeededRNG(seed: 42)
            let edges = (0..<(nodes * degree)).map { _ in UInt64(Int.random(in: 0..<nodes, using: &rng)) }
            let levelAt = nodes * degree
            for (i, v) in edges.enumerated() { try cpu.store(word(i), v) }
            for v in 0..<nodes { try cpu.store(word(levelAt + v), v == 0 ? 0 : UInt64.max) }
            var level: UInt64 = 0
            while true {
                let changed = AtomicCounter(0)
                let current = level
                let k = SVMKernel(name: "bfs") { (e: SVMEngine) throws(SVMFatalFault) in
                    var block = e.index
                    while block * SVMWorkload.blockWords < nodes {
                        for v in (block * SVMWorkload.blockWords)..<min((block + 1) * SVMWorkload.blockWords, nodes)
                        where try e.load(word(levelAt + v)) == current {
                            for j in 0..<degree {
                                let nb = Int(try e.load(word(v * degree + j)))
                                if try e.load(word(levelAt + nb)) == UInt64.max {
                                    try e.store(word(levelAt + nb), current + 1)
                                    changed.add(1)
                                }
                            }
                        }
                        block += e.count
                    }
                }
                virtual += try device.launch(k, on: space, engines: engines).wait().virtualNanoseconds
                if changed.load() == 0 { break }
                level += 1
            }
            // The reference: the same BFS on the CPU's side.
            var levels = [UInt64](repeating: UInt64.max, count: nodes)
            levels[0] = 0
            var frontier = [0]
            while !frontier.isEmpty {
                var next: [Int] = []
                for v in frontier {
                    for j in 0..<degree where levels[Int(edges[v * degree + j])] == UInt64.max {
                        levels[Int(edges[v * degree + j])] = levels[v] + 1
                        next.append(Int(edges[v * degree + j]))
                    }
                }
                frontier = next
            }
            expected = { i in i < levelAt ? edges[i] : i < levelAt + nodes ? levels[i - levelAt] : UInt64(i) &* 2654435761 }
        case .gemm:
            // A at words [0, m²), B at [m², 2m²), C at [2m², 3m²); m a multiple of 16, at most 64.
            let m = min(64, Int((Double(words) / 3).squareRoot()) / 16 * 16)
            guard m >= 16 else { throw Errno.EINVAL }
            let tile = 16, tiles = m / tile
            let k = SVMKernel(name: "gemm") { (e: SVMEngine) throws(SVMFatalFault) in
                var t = e.index
                while t < tiles * tiles {
                    let ti = t / tiles, tj = t % tiles
                    var acc = [UInt64](repeating: 0, count: tile * tile)
                    var ta = [UInt64](repeating: 0, count: tile * tile), tb = ta
                    for kt in 0..<tiles {
                        for r in 0..<tile {
                            for c in 0..<tile {
                                ta[r * tile + c] = try e.load(word((ti * tile + r) * m + kt * tile + c))
                                tb[r * tile + c] = try e.load(word(m * m + (kt * tile + r) * m + tj * tile + c))
                            }
                        }
                        for r in 0..<tile { for c in 0..<tile { for x in 0..<tile { acc[r * tile + c] &+= ta[r * tile + x] &* tb[x * tile + c] } } }
                    }
                    for r in 0..<tile { for c in 0..<tile { try e.store(word(2 * m * m + (ti * tile + r) * m + tj * tile + c), acc[r * tile + c]) } }
                    t += e.count
                }
            }
            virtual = try device.launch(k, on: space, engines: engines).wait().virtualNanoseconds
            let initial: (Int) -> UInt64 = { UInt64($0) &* 2654435761 }
            var c = [UInt64](repeating: 0, count: m * m)
            for i in 0..<m { for j in 0..<m { for x in 0..<m { c[i * m + j] &+= initial(i * m + x) &* initial(m * m + x * m + j) } } }
            expected = { i in i >= 2 * m * m && i < 3 * m * m ? c[i - 2 * m * m] : initial(i) }
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
        case "access-counters": SVMAccessCounterPolicy()
        default: nil
        }
    }
    public static let policyNames = ["first-touch", "remote-map", "density-prefetch", "thrashing-aware", "access-counters"]
}
