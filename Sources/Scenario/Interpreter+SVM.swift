import Devices
import MMCore
import MMSync

/// The SVM device's commands (docs/svm.md): `svm_open`, `svm_policy`, `svm_fill`,
/// `svm_check`, `svm_add`, `svm_run`, `svm_stats`, `svm_close`. Each kernel command launches a kernel on
/// the device's engines and waits for it; a fatal device fault is its errno (EFAULT: no VMA;
/// EPERM: a write to read-only memory), compared with `expect` as a system call's is.
extension ScenarioInterpreter {
    static let svmPolicyFlags: Set<String> = ["first_touch", "remote_map", "density_prefetch", "thrashing_aware", "access_counters"]

    func svm(_ t: Token, _ ctx: Context) throws -> SVMSpace { try named(t, ctx, .svm, \.svms) }

    /// The policy a command's flag names (first touch when none).
    func svmPolicy(_ cmd: Command) throws -> SVMPolicy {
        let chosen = ScenarioInterpreter.svmPolicyFlags.filter { cmd.flag($0) }
        guard chosen.count <= 1 else { throw cmd.fail("expected at most one policy") }
        return SVMRunner.policy(named: (chosen.first ?? "first_touch").replacingUnderscores())!
    }

    /// `svm_open [memory=SIZE] [POLICY] [proc=P] -> NAME`: an SVM device (default 64 MiB of
    /// device memory, a multiple of 2 MiB) bound to the process's address space.
    func svmOpenCommand(_ cmd: Command, _ ctx: Context) throws {
        guard let nameTok = cmd.bind else { throw cmd.fail("expected '-> NAME' to name the SVM device") }
        let name = try resolveName(nameTok, ctx)
        let proc = try process(for: cmd, ctx)
        let memory = try cmd.option("memory").map { try eval($0, ctx) } ?? (64 << 20)
        guard memory <= 1 << 30 else { throw cmd.fail("expected an SVM device memory of at most 1GiB") }
        let policy = try svmPolicy(cmd)
        let m = try theMachine(at: cmd.name.location)
        try syscall(cmd, ctx, { () throws -> SVMSpace in
            let d = try SVMDevice(machine: m, capacityBytes: memory, policy: policy)
            do { return try d.bind(proc.mm) } catch { try? d.shutdown(); throw error }
        }) { s in
            state.withLock { svms[name] = s }
            return "svm (\(s.device.capacityPages) pages, \(policy.name))"
        }
    }

    /// `svm_policy DEV POLICY`: the policy for the next faults.
    func svmPolicyCommand(_ cmd: Command, _ ctx: Context) throws {
        let s = try svm(try cmd.arg(0, "an SVM device"), ctx)
        s.device.policy = try svmPolicy(cmd)
        trace(cmd, ctx, s.device.policy.name)
    }

    /// Engines for a kernel command (`engines=N`, 1…64, default 4).
    private func engines(_ cmd: Command, _ ctx: Context) throws -> Int {
        let n = try cmd.option("engines").map { try eval($0, ctx) } ?? 4
        guard (1...64).contains(n) else { throw cmd.fail("expected engines=1…64") }
        return Int(n)
    }

    /// `svm_fill DEV ADDR LEN PATTERN` / `svm_check DEV ADDR LEN PATTERN`: the device's engines
    /// store the pattern's ints (8 bytes at a time, blocks of 64 words in turn), or load and
    /// compare them: a mismatch fails the command as a CPU `check` does.
    func svmFillOrCheckCommand(_ cmd: Command, _ ctx: Context) throws {
        let isFill = cmd.name.text == "svm_fill"
        let s = try svm(try cmd.arg(0, "an SVM device"), ctx)
        let a = try eval(try cmd.arg(1, "an address"), ctx), len = try eval(try cmd.arg(2, "a length"), ctx)
        guard len <= ScenarioInterpreter.maxAccessBytes else { throw cmd.fail("expected a length of at most 256MiB") }
        let pattern = try Pattern.parse(try cmd.arg(3, "a pattern"), lookup(ctx))
        let index = try indexOption(cmd, ctx), n = try engines(cmd, ctx)
        // The device accesses 8-byte words: anything else is EINVAL, as a driver's ioctl says.
        guard a % 8 == 0, len % 8 == 0, len > 0, a.addingReportingOverflow(len).overflow == false else {
            try runKernel(cmd, ctx, s, nil, engines: n); return
        }
        let words = Int(len / 8)
        let firstBad = AtomicCounter(Int.max) // the lowest word that did not match
        let kernel = SVMKernel(name: isFill ? "fill" : "check") { (e: SVMEngine) throws(SVMFatalFault) in
            var block = e.index
            while block * SVMWorkload.blockWords < words {
                for w in (block * SVMWorkload.blockWords)..<min((block + 1) * SVMWorkload.blockWords, words) {
                    let want = UInt64(pattern.int(index + 2 * w)) | UInt64(pattern.int(index + 2 * w + 1)) << 32
                    let addr = a + UInt64(w) * 8
                    if isFill { try e.store(addr, want) } else if try e.load(addr) != want {
                        var cur = firstBad.load()
                        while w < cur && !firstBad.compareExchange(expected: cur, desired: w) { cur = firstBad.load() }
                    }
                }
                block += e.count
            }
        }
        try runKernel(cmd, ctx, s, kernel, engines: n)
        let bad = firstBad.load()
        if bad != Int.max {
            let k = index + 2 * bad
            throw failure(cmd, "expected \(pattern) (ints \(k) and \(k + 1) = \(Int32(bitPattern: pattern.int(k))), \(Int32(bitPattern: pattern.int(k + 1)))) at byte offset \(bad * 8), the device read otherwise")
        }
    }

    /// `svm_add DEV ADDR DELTA [times=N] [engines=N]`: each engine adds DELTA to the 8-byte word
    /// at ADDR, atomically, N times (default 1).
    func svmAddCommand(_ cmd: Command, _ ctx: Context) throws {
        let s = try svm(try cmd.arg(0, "an SVM device"), ctx)
        let a = try eval(try cmd.arg(1, "an address"), ctx), delta = try eval(try cmd.arg(2, "a delta"), ctx)
        let times = try cmd.option("times").map { try eval($0, ctx) } ?? 1
        guard times <= 1 << 24 else { throw cmd.fail("expected times=N of at most 16777216") }
        let kernel = SVMKernel(name: "add") { (e: SVMEngine) throws(SVMFatalFault) in
            for _ in 0..<times { try e.atomicAdd(a, delta) }
        }
        try runKernel(cmd, ctx, s, a % 8 == 0 ? kernel : nil, engines: try engines(cmd, ctx))
    }

    /// `svm_run DEV WORKLOAD [pages=N] [engines=N] [rounds=N] [cpu_threads=N]`: one of the
    /// runner's workloads (stream, pingpong, counter, gather, stencil, bfs, gemm) over N new
    /// pages of the device's process (default 256, unmapped afterwards), with CPU threads
    /// beside its kernels if asked; every word is checked against the workload's reference
    /// (a wrong word fails the command). A fatal device fault is the outcome.
    func svmRunCommand(_ cmd: Command, _ ctx: Context) throws {
        let s = try svm(try cmd.arg(0, "an SVM device"), ctx)
        let chosen = SVMWorkloadKind.allCases.filter { cmd.flag($0.rawValue) }
        guard chosen.count == 1 else {
            throw cmd.fail("expected one workload: \(SVMWorkloadKind.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        let pages = try cmd.option("pages").map { try eval($0, ctx) } ?? 256
        guard (2...2048).contains(pages) else { throw cmd.fail("expected pages=2…2048") }
        let rounds = try cmd.option("rounds").map { try eval($0, ctx) } ?? 2
        guard (1...1000).contains(rounds) else { throw cmd.fail("expected rounds=1…1000") }
        let cpuThreads = try cmd.option("cpu_threads").map { try eval($0, ctx) } ?? 0
        guard cpuThreads <= 16 else { throw cmd.fail("expected cpu_threads=0…16") }
        let n = try engines(cmd, ctx)
        let process = try state.withLock { () throws -> MMCore.Process in
            guard let p = processes.values.first(where: { $0.mm === s.mm }) else { throw cmd.fail("the SVM device's process has exited") }
            return p
        }
        var result: SVMRunResult?
        try syscall(cmd, ctx, { () throws -> SVMRunResult in
            do {
                return try SVMRunner.run(chosen[0], on: s, process: process, pages: Int(pages), engines: n, rounds: Int(rounds),
                                         cpuThreads: Int(cpuThreads), checkInvariants: false)
            } catch let f as SVMFatalFault { throw f.errno }
        }) { r in
            result = r
            return "ok (\(r.counter("faults")) faults so far, \(SVMRunTime.format(r.virtualNanoseconds)) virtual)"
        }
        if let r = result, r.mismatches != 0 {
            throw failure(cmd, "expected every word of \(chosen[0].rawValue) to match its reference, \(r.mismatches) did not")
        }
    }

    /// Launches `kernel`, waits, and compares its outcome (a fatal fault's errno, or success)
    /// with the command's expectation; no kernel (bad arguments) is EINVAL.
    private func runKernel(_ cmd: Command, _ ctx: Context, _ s: SVMSpace, _ kernel: SVMKernel?, engines: Int) throws {
        try syscall(cmd, ctx, { () throws -> SVMRunTime in
            guard let kernel else { throw Errno.EINVAL }
            let run = try s.device.launch(kernel, on: s, engines: engines)
            do { return try run.wait() } catch let f as SVMFatalFault { throw f.errno }
        }) { t in "ok (\(SVMRunTime.format(t.virtualNanoseconds)) virtual)" }
    }

    /// `svm_stats DEV [expect faults=N migrated_to_device=N …]`: the device's counters.
    func svmStatsCommand(_ cmd: Command, _ ctx: Context) throws {
        let s = try svm(try cmd.arg(0, "an SVM device"), ctx)
        let got = Dictionary(uniqueKeysWithValues: s.device.stats.snapshot.map { ($0.0, UInt64($0.1)) })
        emit("svm_stats \(resolvedText(cmd.positional[0], ctx)): " + s.device.stats.snapshot.filter { $0.1 != 0 }.map { "\($0.0) \($0.1)" }.joined(separator: ", ")
             + "; mapped \(s.mappedPages), resident \(s.device.capacityPages - s.device.freePages)")
        try checkCounters(cmd, ctx, got)
    }

    /// `svm_close DEV`: removes the device; its pages go back to system memory with their bytes.
    func svmCloseCommand(_ cmd: Command, _ ctx: Context) throws {
        let t = try cmd.arg(0, "an SVM device")
        let s = try svm(t, ctx)
        let n = try resolveName(t, ctx)
        state.withLock { svms[n] = nil }
        do { try s.device.shutdown() } catch { throw failure(cmd, "the device could not evict its pages: \(error)") }
        trace(cmd, ctx, "0")
    }
}

extension String {
    func replacingUnderscores() -> String { String(map { $0 == "_" ? "-" : $0 }) }
}

extension SVMRunTime {
    static func format(_ ns: UInt64) -> String {
        let us = Double(ns) / 1000
        return us >= 1000 ? "\(Double(Int(us / 10)) / 100) ms" : "\(Int(us)) µs"
    }
}
