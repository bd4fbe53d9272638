import MMCore
import MMSync

/// One run of `SVMRunner`: the device, the data's layout, the kernels launched so far (for
/// the run's virtual time) and the CPU threads beside them.
final class SVMRunContext {
    let device: SVMDevice
    let space: SVMSpace
    let process: MMCore.Process
    let cpu: CPU
    let layout: SVMWordLayout
    let engines: Int
    let rounds: Int
    let cpuThreads: Int
    private var companion: SVMCPUCompanion?
    private var companionResult: (lanes: [Int], mismatches: Int, passes: Int, accesses: Int)?
    private var startVirtual: UInt64?
    private var endVirtual: UInt64?

    init(device: SVMDevice, space: SVMSpace, process: MMCore.Process, cpu: CPU, layout: SVMWordLayout,
         engines: Int, rounds: Int, cpuThreads: Int) {
        self.device = device; self.space = space; self.process = process; self.cpu = cpu; self.layout = layout
        self.engines = engines; self.rounds = rounds; self.cpuThreads = cpuThreads
    }

    /// Logical word i's value before the workload.
    @inline(__always) static func initial(_ i: Int) -> UInt64 { UInt64(i) &* 2654435761 }

    /// The workload's data are set up: the clock starts and the CPU threads (if any) start,
    /// told which words keep their value through the run.
    func begin(stable: @escaping @Sendable (Int) -> UInt64?) {
        startVirtual = device.virtualNanoseconds
        if cpuThreads > 0 { companion = SVMCPUCompanion(process: process, layout: layout, count: cpuThreads, stable: stable) }
    }

    /// Runs `kernel` on the engines and waits for it.
    func launch(_ kernel: SVMKernel) throws {
        if startVirtual == nil { begin { _ in nil } }
        try device.launch(kernel, on: space, engines: engines).wait()
    }

    /// The workload's device and CPU steps are over (before its reference is computed): the
    /// CPU threads stop and the clock is read. Idempotent.
    func end() {
        _ = stopCompanion()
        if endVirtual == nil { endVirtual = device.virtualNanoseconds }
    }

    /// From `begin` to `end` on the device's clock (which every kernel's end moves forward,
    /// and the CPU's faults back between kernels too).
    var virtualNanoseconds: UInt64 {
        guard let s = startVirtual else { return 0 }
        return (endVirtual ?? device.virtualNanoseconds) - s
    }

    /// Stops and joins the CPU threads (once). Return: their record (all zero without them).
    func stopCompanion() -> (lanes: [Int], mismatches: Int, passes: Int, accesses: Int) {
        if let r = companionResult { return r }
        let r = companion?.finish() ?? ([Int](repeating: 0, count: layout.pages), 0, 0, 0)
        companion = nil
        companionResult = r
        return r
    }

    // MARK: the workloads (each returns logical word i's expected final value)

    func stream() throws -> (Int) -> UInt64 {
        let layout = self.layout
        begin { _ in nil }
        try launch(SVMKernel(name: "stream") { (e: SVMEngine) throws(SVMFatalFault) in
            var block = e.index
            while block * SVMWorkload.blockWords < layout.words {
                for i in (block * SVMWorkload.blockWords)..<min((block + 1) * SVMWorkload.blockWords, layout.words) {
                    let a = layout.address(i)
                    try e.store(a, SVMWorkload.stream(try e.load(a)))
                }
                block += e.count
            }
        })
        end()
        return { SVMWorkload.stream(SVMRunContext.initial($0)) }
    }

    /// Words 0 and 1 of every page: the device increments word 0, the CPU word 1, in turns.
    func pingpong() throws -> (Int) -> UInt64 {
        let layout = self.layout, pages = layout.pages, per = SVMWordLayout.wordsPerPage, rounds = self.rounds
        begin { i in i % per >= 2 ? SVMRunContext.initial(i) : nil }
        for _ in 0..<rounds {
            try launch(SVMKernel(name: "pingpong") { (e: SVMEngine) throws(SVMFatalFault) in
                for p in stride(from: e.index, to: pages, by: e.count) {
                    let a = layout.address(p * per)
                    try e.store(a, try e.load(a) &+ 1)
                }
            })
            for p in 0..<pages {
                let a = layout.address(p * per + 1)
                try cpu.store(a, try cpu.load(a, as: UInt64.self) &+ 1)
            }
        }
        end()
        return { i in SVMRunContext.initial(i) &+ (i % per <= 1 ? UInt64(rounds) : 0) }
    }

    /// Word 0: every engine adds 1 000 times atomically while two CPU threads do the same.
    func counter() throws -> (Int) -> UInt64 {
        let adds = 1000, a = layout.address(0), engines = self.engines
        begin { i in i != 0 ? SVMRunContext.initial(i) : nil }
        let cpus = (0..<2).map { _ in process.makeCPU() }
        let threads = cpus.map { c in ModelThread.spawn(name: "svm-cpu-adds") { for _ in 0..<adds { _ = try? c.fetchAdd(a, 1) } } }
        var joined = false
        defer { if !joined { threads.forEach { $0.join() } }; cpus.forEach { $0.detach() } }
        try launch(SVMWorkload.counter(address: a, adds: adds))
        threads.forEach { $0.join() }
        joined = true
        end()
        return { i in SVMRunContext.initial(i) &+ (i == 0 ? UInt64((engines + 2) * adds) : 0) }
    }

    /// Engine e sums words at indices drawn from seed e (outside the last page) and stores
    /// the sum in word e of the last page.
    func gather() throws -> (Int) -> UInt64 {
        let layout = self.layout, per = SVMWordLayout.wordsPerPage
        guard layout.pages >= 2, engines <= per else { throw Errno.EINVAL }
        let limit = layout.words - per, reads = max(256, layout.words / (64 * engines))
        @Sendable func indices(_ e: Int) -> [Int] {
            var rng = SeededRNG(seed: UInt64(e) + 1)
            return (0..<reads).map { _ in Int.random(in: 0..<limit, using: &rng) }
        }
        begin { i in i < limit ? SVMRunContext.initial(i) : nil }
        try launch(SVMKernel(name: "gather") { (e: SVMEngine) throws(SVMFatalFault) in
            var sum: UInt64 = 0
            for i in indices(e.index) { sum &+= try e.load(layout.address(i)) }
            try e.store(layout.address(limit + e.index), sum)
        })
        end()
        let sums = (0..<engines).map { e in indices(e).reduce(UInt64(0)) { $0 &+ SVMRunContext.initial($1) } }
        return { i in i >= limit && i < limit + sums.count ? sums[i - limit] : SVMRunContext.initial(i) }
    }

    /// A 3-point stencil: word n + i becomes the sum of words i - 1, i, i + 1 of the first half
    /// (clamped at its ends).
    func stencil() throws -> (Int) -> UInt64 {
        let layout = self.layout, n = layout.words / 2
        guard n >= 1 else { throw Errno.EINVAL }
        begin { i in i < n ? SVMRunContext.initial(i) : nil }
        try launch(SVMKernel(name: "stencil") { (e: SVMEngine) throws(SVMFatalFault) in
            var block = e.index
            while block * SVMWorkload.blockWords < n {
                for i in (block * SVMWorkload.blockWords)..<min((block + 1) * SVMWorkload.blockWords, n) {
                    let l = try e.load(layout.address(max(i - 1, 0))), c = try e.load(layout.address(i))
                    let r = try e.load(layout.address(min(i + 1, n - 1)))
                    try e.store(layout.address(n + i), l &+ c &+ r)
                }
                block += e.count
            }
        })
        end()
        return { i in
            guard i >= n && i < 2 * n else { return SVMRunContext.initial(i) }
            let j = i - n
            return SVMRunContext.initial(max(j - 1, 0)) &+ SVMRunContext.initial(j) &+ SVMRunContext.initial(min(j + 1, n - 1))
        }
    }

    /// Breadth-first search over a generated graph (4 seeded edges per node; edges at words
    /// [0, 4N), levels at [4N, 5N), unlabelled UInt64.max), one kernel per level.
    func bfs() throws -> (Int) -> UInt64 {
        let layout = self.layout, degree = 4, nodes = layout.words / (degree + 1)
        guard nodes >= 2 else { throw Errno.EINVAL }
        var rng = SeededRNG(seed: 42)
        let edges = (0..<(nodes * degree)).map { _ in UInt64(Int.random(in: 0..<nodes, using: &rng)) }
        let levelAt = nodes * degree
        for (i, v) in edges.enumerated() { try cpu.store(layout.address(i), v) }
        for v in 0..<nodes { try cpu.store(layout.address(levelAt + v), v == 0 ? 0 : UInt64.max) }
        begin { i in i < levelAt ? edges[i] : i >= levelAt + nodes ? SVMRunContext.initial(i) : nil }
        var level: UInt64 = 0
        while true {
            let changed = AtomicCounter(0)
            let current = level
            try launch(SVMKernel(name: "bfs") { (e: SVMEngine) throws(SVMFatalFault) in
                var block = e.index
                while block * SVMWorkload.blockWords < nodes {
                    for v in (block * SVMWorkload.blockWords)..<min((block + 1) * SVMWorkload.blockWords, nodes)
                    where try e.load(layout.address(levelAt + v)) == current {
                        for j in 0..<degree {
                            let nb = Int(try e.load(layout.address(v * degree + j)))
                            if try e.load(layout.address(levelAt + nb)) == UInt64.max {
                                try e.store(layout.address(levelAt + nb), current + 1)
                                changed.add(1)
                            }
                        }
                    }
                    block += e.count
                }
            })
            if changed.load() == 0 { break }
            level += 1
        }
        end()
        // The reference: the same search on the CPU's side.
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
        return { i in i < levelAt ? edges[i] : i < levelAt + nodes ? levels[i - levelAt] : SVMRunContext.initial(i) }
    }

    /// C = A × B (wrapping arithmetic) with A of m × k words, B of k × m and C of m × m, k as
    /// large as the working set allows (so the data scale with it); each engine computes
    /// 16 × 16 tiles of C from tiles of A and B copied to its own memory. A at words
    /// [0, mk), B at [mk, 2mk), C at [2mk, 2mk + m²).
    func gemm() throws -> (Int) -> UInt64 {
        let layout = self.layout, tile = 16
        let m = layout.words >= 1 << 22 ? 32 : [64, 32, 16].first { 2 * $0 * tile + $0 * $0 <= layout.words } ?? 0
        guard m >= tile else { throw Errno.EINVAL }
        let k = (layout.words - m * m) / (2 * m) / tile * tile
        let tiles = m / tile, ktiles = k / tile, bAt = m * k, cAt = 2 * m * k
        begin { i in i < cAt || i >= cAt + m * m ? SVMRunContext.initial(i) : nil }
        try launch(SVMKernel(name: "gemm") { (e: SVMEngine) throws(SVMFatalFault) in
            var t = e.index
            var acc = [UInt64](repeating: 0, count: tile * tile)
            var ta = acc, tb = acc
            while t < tiles * tiles {
                let ti = t / tiles, tj = t % tiles
                for i in acc.indices { acc[i] = 0 }
                for kt in 0..<ktiles {
                    for r in 0..<tile {
                        for c in 0..<tile {
                            ta[r * tile + c] = try e.load(layout.address((ti * tile + r) * k + kt * tile + c))
                            tb[r * tile + c] = try e.load(layout.address(bAt + (kt * tile + r) * m + tj * tile + c))
                        }
                    }
                    for r in 0..<tile { for x in 0..<tile { let av = ta[r * tile + x]; for c in 0..<tile { acc[r * tile + c] &+= av &* tb[x * tile + c] } } }
                }
                for r in 0..<tile { for c in 0..<tile { try e.store(layout.address(cAt + (ti * tile + r) * m + tj * tile + c), acc[r * tile + c]) } }
                t += e.count
            }
        })
        end()
        var c = [UInt64](repeating: 0, count: m * m)
        for i in 0..<m {
            for x in 0..<k {
                let av = SVMRunContext.initial(i * k + x)
                for j in 0..<m { c[i * m + j] &+= av &* SVMRunContext.initial(bAt + x * m + j) }
            }
        }
        return { i in i >= cAt && i < cAt + m * m ? c[i - cAt] : SVMRunContext.initial(i) }
    }
}
