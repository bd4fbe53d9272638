import Devices
import HMM
import MMCore
import MMSync

extension ScenarioInterpreter {
    func dispatch(_ cmd: Command, _ ctx: inout Context) throws {
        guard let spec = CommandSpec.spec(cmd.name.text) else {
            throw ScenarioSyntaxError(location: cmd.name.location, message: "expected a command, found unknown word '\(cmd.name.text)'")
        }
        try cmd.allow(spec)
        if spec.inProcess, cmd.positional.first.map({ _ in true }) ?? true, let p = cmd.option("proc") {
            _ = try process(named: try resolveName(p, ctx), at: p.location)   // a known process, whatever the command
        }
        switch cmd.name.text {
        case "machine": try machineCommand(cmd, ctx)
        case "process": try processCommand(cmd, &ctx)
        case "use": try useCommand(cmd, &ctx)
        case "fork": try forkCommand(cmd, ctx)
        case "exit": try exitCommand(cmd, ctx)
        case "mmap": try mmapCommand(cmd, ctx)
        case "munmap", "mprotect", "madvise": try rangeSyscall(cmd, ctx)
        case "mremap": try mremapCommand(cmd, ctx)
        case "file": try fileCommand(cmd, ctx)
        case "pwrite", "pread", "ftruncate": try fileIO(cmd, ctx)
        case "fill", "check": try fillOrCheck(cmd, ctx)
        case "load", "store", "cmpxchg", "fetch_add": try access(cmd, ctx)
        case "buffer", "check_buffer": try bufferCommand(cmd, ctx)
        case "open": try openCommand(cmd, ctx)
        case "close": try closeCommand(cmd, ctx)
        case "mmap_device": try mmapDeviceCommand(cmd, ctx)
        case _ where ScenarioInterpreter.deviceCommands[cmd.name.text] != nil:
            try deviceCommand(cmd, ctx)
        case "gup": try gupCommand(cmd, ctx)
        case "put", "unpin": try putCommand(cmd, ctx)
        case "pagemap": try pagemapCommand(cmd, ctx)
        case "migrate_pages": try migratePagesCommand(cmd, ctx)
        case "invariants": try invariantsCommand(cmd, ctx)
        case "vmas": try vmasCommand(cmd, ctx)
        case "ptes": try ptesCommand(cmd, ctx)
        case "device_pages": try devicePagesCommand(cmd, ctx)
        case "svm_open": try svmOpenCommand(cmd, ctx)
        case "svm_policy": try svmPolicyCommand(cmd, ctx)
        case "svm_fill", "svm_check": try svmFillOrCheckCommand(cmd, ctx)
        case "svm_add": try svmAddCommand(cmd, ctx)
        case "svm_run": try svmRunCommand(cmd, ctx)
        case "device_shootdown", "svm_shootdown": try deviceShootdownCommand(cmd, ctx)
        case "odp_open", "odp_reg", "odp_reg_implicit", "odp_dereg", "rdma_write", "rdma_read", "rdma_fadd", "rdma_cswap", "odp_stats": try odpCommand(cmd, ctx)
        case "svm_stats": try svmStatsCommand(cmd, ctx)
        case "svm_close": try svmCloseCommand(cmd, ctx)
        case "meminfo": try meminfoCommand(cmd, ctx)
        case "vmstat": try vmstatCommand(cmd, ctx)
        case "hugepages": try hugepagesCommand(cmd, ctx)
        case "thp": try thpCommand(cmd, ctx)
        case "kswapd": try kswapdCommand(cmd, ctx)
        case "sleep":
            let ns = try eval(try cmd.arg(0, "nanoseconds"), ctx)
            guard ns <= 1_000_000_000 else { throw cmd.fail("expected a sleep of at most 1 s (1000000000 ns)") }
            try checkDeadline(cmd, sleeping: ns)
            syncSleep(nanoseconds: ns)
            trace(cmd, ctx, "ok")
        case "print":
            emit(cmd.args.map { $0.value.text }.joined(separator: " "))
        case "skip":
            let reason = cmd.args.map { $0.value.text }.joined(separator: " ")
            throw SkipScenario(reason: reason.isEmpty ? "skipped" : reason)
        default:
            throw ScenarioSyntaxError(location: cmd.name.location, message: "expected a command, found unknown word '\(cmd.name.text)'")
        }
    }

    // MARK: machine and processes

    /// A `machine swap=` size: none, or one swap area of a header page and at least one slot.
    static func isValidSwapSize(_ v: UInt64) -> Bool { v == 0 || (v >= 2 * pageSize && v <= 16 << 30 && v % pageSize == 0) }

    func machineCommand(_ cmd: Command, _ ctx: Context) throws {
        guard state.withLock({ machine == nil }) else { throw cmd.fail("expected 'machine' before anything that uses the machine") }
        if let m = cmd.option("memory") {
            let v = try Expression.evaluate(m) { _ in nil }
            guard v >= 8 << 20, v <= 16 << 30, v % pageSize == 0 else { throw ScenarioSyntaxError(location: m.location, message: "expected memory between 8MiB and 16GiB, a page multiple") }
            try reserveHostMemory(v, at: cmd, releasing: machineMemory)
            machineMemory = v
        }
        if let s = cmd.option("swap") {
            let v = try Expression.evaluate(s) { _ in nil }
            guard ScenarioInterpreter.isValidSwapSize(v) else { throw ScenarioSyntaxError(location: s.location, message: "expected swap of 0 or between 8KiB and 16GiB, a page multiple") }
            try reserveHostMemory(v, at: cmd, releasing: machineSwap)
            machineSwap = v
        }
        if let f = cmd.option("swap_file") {
            let v = try Expression.evaluate(f) { _ in nil }
            guard v <= 1 else { throw ScenarioSyntaxError(location: f.location, message: "expected swap_file=0 or 1") }
            guard v == 0 || cmd.option("swap") != nil else {
                throw ScenarioSyntaxError(location: f.location, message: "expected swap=SIZE with swap_file=1 (the file is the swap area)")
            }
            machineSwapFile = v == 1
        }
        if let c = cmd.option("page_cluster") {
            let v = try Expression.evaluate(c) { _ in nil }
            guard v <= 31 else { throw ScenarioSyntaxError(location: c.location, message: "expected page_cluster between 0 and 31") }
            machinePageCluster = Int(v)
        }
        if let o = cmd.option("oom_killer") {
            let v = try Expression.evaluate(o) { _ in nil }
            guard v <= 1 else { throw ScenarioSyntaxError(location: o.location, message: "expected oom_killer=0 or 1") }
            machineOOMKiller = v == 1
        }
        if let c = cmd.option("max_map_count") {
            let v = try Expression.evaluate(c) { _ in nil }
            guard v >= 1, v <= 1 << 24 else { throw ScenarioSyntaxError(location: c.location, message: "expected max_map_count between 1 and 16777216") }
            maxMapCount = Int(v)
        }
        trace(cmd, ctx, "ok")
    }

    func processCommand(_ cmd: Command, _ ctx: inout Context) throws {
        let nameTok = try cmd.arg(0, "a process name")
        guard isName(nameTok.text) else { throw ScenarioSyntaxError(location: nameTok.location, message: "expected a process name") }
        let name = try resolveName(nameTok, ctx)
        let m = try theMachine(at: cmd.name.location)
        let pid = try state.withLock { () throws -> Int32 in
            if processes[name] == nil {
                do { processes[name] = try MMCore.Process(machine: m) } catch { throw failure(cmd, "expected a new process, got \(error)") }
                processOrder.append(name)
            }
            currentProcess = name
            return processes[name]!.pid
        }
        ctx.process = name
        trace(cmd, ctx, "pid \(pid)")
    }

    func useCommand(_ cmd: Command, _ ctx: inout Context) throws {
        let tok = try cmd.arg(0, "a process name")
        let name = try resolveName(tok, ctx)
        let p = try process(named: name, at: tok.location)
        state.withLock { currentProcess = name }
        ctx.process = name
        trace(cmd, ctx, "pid \(p.pid)")
    }

    func forkCommand(_ cmd: Command, _ ctx: Context) throws {
        guard let childTok = cmd.bind else { throw cmd.fail("expected '-> NAME' to name the child") }
        let child = try resolveName(childTok, ctx)
        // A name may be reused once its process has exited (fork in a loop).
        guard state.withLock({ processes[child].map { $0.exited } ?? true }) else {
            throw ScenarioSyntaxError(location: childTok.location, message: "expected a new process name, '\(child)' is still running")
        }
        let parent = try process(named: try cmd.optionalArg(0).map { try resolveName($0, ctx) } ?? ctx.process, at: cmd.name.location)
        try syscall(cmd, ctx, { try parent.fork() }) { p in
            state.withLock {
                if let old = processes[child] { cpus[ObjectIdentifier(old)] = nil } else { processOrder.append(child) }
                processes[child] = p
            }
            return "pid \(p.pid)"
        }
    }

    func exitCommand(_ cmd: Command, _ ctx: Context) throws {
        let name = try cmd.optionalArg(0).map { try resolveName($0, ctx) } ?? ctx.process ?? state.withLock { currentProcess }
        let p = try process(named: name, at: cmd.name.location)
        if let c = state.withLock({ cpus.removeValue(forKey: ObjectIdentifier(p)) }) { c.detach() }
        // Devices opened on the process stay open (their mirrors see the release).
        p.exit()
        trace(cmd, ctx, "ok")
    }

    // MARK: system calls

    func parseProt(_ t: Token) throws -> Protection { try parseProtection(t) }

    func bindRegion(_ cmd: Command, _ ctx: Context, _ address: UInt64, _ size: UInt64) {
        guard let t = cmd.bind, let b = try? resolveName(t, ctx) else { return }
        state.withLock {
            variables[b] = address
            variables[b + ".size"] = size
            variables[b + ".end"] = address &+ size
            variables[b + ".pages"] = size / pageSize
        }
    }

    func mmapCommand(_ cmd: Command, _ ctx: Context) throws {
        let proc = try process(for: cmd, ctx)
        let size = try eval(try cmd.arg(0, "a size"), ctx)
        let prot = try cmd.option("prot").map(parseProt) ?? .readWrite
        var flags: MapFlags = cmd.flag("shared") ? .shared : .private
        if cmd.flag("shared") && cmd.flag("private") { flags = [.shared, .private] }
        var file: ShmemFile? = nil
        if let f = cmd.option("file") {
            file = try fileNamed(f, ctx)
        } else {
            flags.insert(.anonymous)
        }
        var address: UInt64 = 0
        if let f = cmd.option("fixed") { address = try eval(f, ctx); flags.insert(cmd.flag("noreplace") ? .fixedNoReplace : .fixed) }
        if let h = cmd.option("hint") { address = try eval(h, ctx) }
        if cmd.flag("populate") { flags.insert(.populate) }
        if cmd.flag("hugetlb") { flags.insert(.hugetlb) }
        if let h = cmd.option("hugetlb") {
            // hugetlb=2MiB|1GiB: MAP_HUGETLB with log2 of the size in MAP_HUGE_SHIFT's bits (a
            // power of two with no pool: mmap says EINVAL).
            let size = try eval(h, ctx)
            guard size > 0, size & (size - 1) == 0 else { throw ScenarioSyntaxError(location: h.location, message: "expected a huge page size (2MiB or 1GiB)") }
            flags.insert(.hugetlb)
            flags.insert(MapFlags(rawValue: Int32(size.trailingZeroBitCount) << Int32(MapFlags.hugeShift)))
        }
        let offset = try cmd.option("offset").map { try eval($0, ctx) } ?? 0
        try syscall(cmd, ctx, { try proc.mmap(address: address, length: size, prot: prot, flags: flags, file: file, offset: offset) }) { a in
            bindRegion(cmd, ctx, a, (size + pageSize - 1) & pageMask)
            return "0x" + String(a, radix: 16)
        }
    }

    static let adviceNames: [String: MadviseAdvice] = [
        "normal": .normal, "random": .random, "sequential": .sequential, "willneed": .willNeed, "dontneed": .dontNeed,
        "free": .free, "dontfork": .dontFork, "dofork": .doFork, "hugepage": .hugePage, "nohugepage": .noHugePage,
        "collapse": .collapse, "cold": .cold, "pageout": .pageout,
    ]

    func rangeSyscall(_ cmd: Command, _ ctx: Context) throws {
        let proc = try process(for: cmd, ctx)
        let a = try eval(try cmd.arg(0, "an address"), ctx)
        let len = try eval(try cmd.arg(1, "a length"), ctx)
        var result: Errno? = nil
        do {
            switch cmd.name.text {
            case "munmap": try proc.munmap(a, length: len)
            case "mprotect": try proc.mprotect(a, length: len, prot: try parseProt(try cmd.arg(2, "a protection")))
            default:
                let t = try cmd.arg(2, "an advice")
                let advice: MadviseAdvice
                if let named = ScenarioInterpreter.adviceNames[t.text] { advice = named } else {
                    guard let v = Int32(t.text) else { throw ScenarioSyntaxError(location: t.location, message: "expected an advice (dontneed, free, hugepage, nohugepage, normal, …) or a number") }
                    advice = MadviseAdvice(rawValue: v)
                }
                try proc.madvise(a, length: len, advice: advice)
            }
        } catch let e as Errno { result = e }
        trace(cmd, ctx, result?.name ?? "0")
        try checkErrno(cmd, result)
    }

    func mremapCommand(_ cmd: Command, _ ctx: Context) throws {
        let proc = try process(for: cmd, ctx)
        let a = try eval(try cmd.arg(0, "an address"), ctx)
        let old = try eval(try cmd.arg(1, "the old length"), ctx)
        let new = try eval(try cmd.arg(2, "the new length"), ctx)
        var flags: MremapFlags = []
        if cmd.flag("maymove") { flags.insert(.mayMove) }
        if cmd.flag("dontunmap") { flags.insert(.dontUnmap) }
        var target: UInt64 = 0
        if let f = cmd.option("fixed") { flags.insert(.fixed); target = try eval(f, ctx) }
        try syscall(cmd, ctx, { try proc.mremap(a, oldLength: old, newLength: new, flags: flags, newAddress: target) }) { r in
            bindRegion(cmd, ctx, r, (new + pageSize - 1) & pageMask)
            return "0x" + String(r, radix: 16)
        }
    }

    // MARK: files

    func fileCommand(_ cmd: Command, _ ctx: Context) throws {
        let name = try cmd.arg(0, "a file name")
        let size = try cmd.option("size").map { try eval($0, ctx) } ?? 0
        guard size <= 1 << 40 else { throw cmd.fail("expected a file size of at most 1TiB") }
        let m = try theMachine(at: cmd.name.location)
        let n = try resolveName(name, ctx)
        state.withLock { files[n] = ShmemFile(machine: m, size: size, name: n) }
        trace(cmd, ctx, "ok")
    }

    func fileNamed(_ t: Token, _ ctx: Context) throws -> ShmemFile { try named(t, ctx, .file, \.files) }

    func fileIO(_ cmd: Command, _ ctx: Context) throws {
        let f = try fileNamed(try cmd.arg(0, "a file"), ctx)
        switch cmd.name.text {
        case "ftruncate":
            var err: Errno? = nil
            do { try f.ftruncate(try eval(try cmd.arg(1, "a size"), ctx)) } catch let e as Errno { err = e }
            trace(cmd, ctx, err?.name ?? "0")
            try checkErrno(cmd, err)
            return
        case "pwrite":
            let off = try eval(try cmd.arg(1, "an offset"), ctx)
            let len = try eval(try cmd.arg(2, "a length"), ctx)
            guard len <= ScenarioInterpreter.maxAccessBytes else { throw cmd.fail("expected a length of at most 256MiB") }
            let pattern = try Pattern.parse(try cmd.arg(3, "a pattern"), lookup(ctx))
            let index = try indexOption(cmd, ctx)
            try reserveHostMemory(len, at: cmd)
            defer { releaseHostMemory(len) }
            var bytes = [UInt8](repeating: 0, count: Int(len))
            fillBytes(&bytes, pattern, index: index)
            var err: Errno? = nil
            do { try f.pwrite(offset: off, bytes: bytes) } catch let e { err = e }
            trace(cmd, ctx, err?.name ?? "ok")
            try checkErrno(cmd, err)
            return
        default: // pread
            let off = try eval(try cmd.arg(1, "an offset"), ctx)
            let len = try eval(try cmd.arg(2, "a length"), ctx)
            guard len <= ScenarioInterpreter.maxAccessBytes else { throw cmd.fail("expected a length of at most 256MiB") }
            try reserveHostMemory(len, at: cmd)
            defer { releaseHostMemory(len) }
            let got: [UInt8]
            // The bare expectation is either data (a pattern) or an outcome (ok / an errno name).
            let expectsData = cmd.bareExpectations.first.map { !isOutcome($0.text) } ?? false
            do { got = try f.pread(offset: off, count: Int(len)) } catch let e {
                trace(cmd, ctx, e.name)
                if expectsData, cmd.expectation("errno") == nil, let p = cmd.bareExpectations.first {
                    throw failure(cmd, "expected data matching \(p.text), got \(e.name)")
                }
                try checkErrno(cmd, e); return
            }
            if !expectsData && (!cmd.bareExpectations.isEmpty || cmd.expectation("errno") != nil) {
                try checkErrno(cmd, nil)                    // `expect ok` passes; an errno fails
            }
            if let l = cmd.expectation("len") {
                let want = try eval(l, ctx)
                if UInt64(got.count) != want { throw failure(cmd, "expected \(want) bytes read, got \(got.count)") }
            }
            if expectsData, let p = cmd.bareExpectations.first {
                let pattern = try Pattern.parse(p, lookup(ctx))
                let index = try indexOption(cmd, ctx)
                if let msg = compare(got, pattern, index: index) { throw failure(cmd, msg) }
            }
            trace(cmd, ctx, "\(got.count) bytes")
        }
    }

    func signalName(_ f: AccessFault) -> String {
        switch f { case .segv: return "segv"; case .bus: return "bus"; case .oom: return "oom" }
    }

    func isOutcome(_ text: String) -> Bool {
        text.split(separator: "|", omittingEmptySubsequences: false).allSatisfy { $0 == "ok" || parseErrno(String($0)) != nil }
    }
    func isSignalList(_ text: String) -> Bool {
        text.split(separator: "|", omittingEmptySubsequences: false).allSatisfy { ScriptChecker.signals.contains(String($0)) }
    }

    func fillBytes(_ bytes: inout [UInt8], _ pattern: Pattern, index: Int) {
        bytes.withUnsafeMutableBytes { raw in
            let n = raw.count / 4
            for k in 0..<n { raw.storeBytes(of: pattern.int(index + k), toByteOffset: k * 4, as: UInt32.self) }
            for k in (n * 4)..<raw.count { raw[k] = UInt8(truncatingIfNeeded: pattern.int(index + n) >> (8 * (k - n * 4))) }
        }
    }

    /// nil when `bytes` follows the pattern, else "expected …, got …" naming the first mismatch.
    func compare(_ bytes: [UInt8], _ pattern: Pattern, index: Int) -> String? {
        bytes.withUnsafeBytes { raw -> String? in
            let n = raw.count / 4
            for k in 0..<n {
                let v = raw.load(fromByteOffset: k * 4, as: UInt32.self)
                if v != pattern.int(index + k) {
                    return "expected \(pattern) (int \(index + k) = \(Int32(bitPattern: pattern.int(index + k)))), got \(Int32(bitPattern: v)) at byte offset \(k * 4)"
                }
            }
            return nil
        }
    }

    // MARK: CPU accesses

    func fillOrCheck(_ cmd: Command, _ ctx: Context) throws {
        let isFill = cmd.name.text == "fill"
        let proc = try process(for: cmd, ctx)
        let a = try eval(try cmd.arg(0, "an address"), ctx)
        let len = try eval(try cmd.arg(1, "a length"), ctx)
        guard len <= ScenarioInterpreter.maxAccessBytes else { throw cmd.fail("expected a length of at most 256MiB") }
        let index = try indexOption(cmd, ctx)
        let cpu = cpu(for: proc, ctx)
        try reserveHostMemory(len, at: cmd)
        defer { releaseHostMemory(len) }
        if isFill {
            let pattern = try Pattern.parse(try cmd.arg(2, "a pattern"), lookup(ctx))
            var bytes = [UInt8](repeating: 0, count: Int(len))
            fillBytes(&bytes, pattern, index: index)
            do { try cpu.write(a, bytes) } catch { trace(cmd, ctx, "\(error)"); try expectSignal(cmd, error); return }
            trace(cmd, ctx, "ok")
            try expectSignal(cmd, nil)
        } else {
            // `check A LEN PATTERN [expect segv|…]` or `check A LEN expect PATTERN`.
            let signalExpectation = cmd.bareExpectations.first { isSignalList($0.text) }
            let patternTok = cmd.optionalArg(2) ?? cmd.bareExpectations.first { !isSignalList($0.text) }
            guard let pt = patternTok else { throw cmd.fail("expected a pattern to check against") }
            let pattern = try Pattern.parse(pt, lookup(ctx))
            let got: [UInt8]
            do { got = try cpu.read(a, count: Int(len)) } catch let f {
                trace(cmd, ctx, "\(f)")
                guard signalExpectation != nil else { throw failure(cmd, "expected \(pattern), got \(f)") }
                try expectSignal(cmd, f)
                return
            }
            trace(cmd, ctx, "ok")
            if let msg = compare(got, pattern, index: index) { throw failure(cmd, msg) }
            try expectSignal(cmd, nil)
        }
    }

    /// `expect segv` / `expect bus` / alternatives `expect ok|segv` / default success, for accesses.
    func expectSignal(_ cmd: Command, _ got: AccessFault?) throws {
        let t = cmd.bareExpectations.first { isSignalList($0.text) }
        let wanted = t.map { $0.text.split(separator: "|").map(String.init) } ?? ["ok"]
        let gotName = got.map(signalName) ?? "ok"
        if !wanted.contains(gotName) { throw failure(cmd, "expected \(t?.text ?? "ok"), got \(got.map { "\($0)" } ?? "success")") }
    }

    func access(_ cmd: Command, _ ctx: Context) throws {
        let proc = try process(for: cmd, ctx)
        let a = try eval(try cmd.arg(0, "an address"), ctx)
        let width = cmd.flag("u8") ? 1 : cmd.flag("u16") ? 2 : cmd.flag("u32") ? 4 : 8
        guard a % UInt64(width) == 0 else { throw cmd.fail("expected an address aligned to \(width) bytes") }
        guard cmd.name.text == "load" || cmd.name.text == "store" || width == 8 else { throw cmd.fail("expected u64 for atomics") }
        let cpu = cpu(for: proc, ctx)
        var value: UInt64 = 0
        do {
            switch cmd.name.text {
            case "load":
                switch width {
                case 1: value = UInt64(try cpu.load(a, as: UInt8.self))
                case 2: value = UInt64(try cpu.load(a, as: UInt16.self))
                case 4: value = UInt64(try cpu.load(a, as: UInt32.self))
                default: value = try cpu.load(a, as: UInt64.self)
                }
            case "store":
                let v = try eval(try cmd.arg(1, "a value"), ctx)
                switch width {
                case 1: try cpu.store(a, UInt8(truncatingIfNeeded: v))
                case 2: try cpu.store(a, UInt16(truncatingIfNeeded: v))
                case 4: try cpu.store(a, UInt32(truncatingIfNeeded: v))
                default: try cpu.store(a, v)
                }
            case "cmpxchg":
                value = try cpu.compareExchange(a, expected: try eval(try cmd.arg(1, "the expected value"), ctx), desired: try eval(try cmd.arg(2, "the new value"), ctx))
            default:
                value = try cpu.fetchAdd(a, try eval(try cmd.arg(1, "a delta"), ctx))
            }
        } catch let f as AccessFault {
            trace(cmd, ctx, "\(f)")
            if let t = cmd.bareExpectations.first, !isSignalList(t.text) {
                let alts = t.text.split(separator: "|").map(String.init)
                guard alts.contains(signalName(f)) else { throw failure(cmd, "expected \(t.text), got \(f)") }
                return
            }
            try expectSignal(cmd, f)
            return
        }
        trace(cmd, ctx, cmd.name.text == "store" ? "ok" : "\(value)")
        if let t = cmd.bareExpectations.first, !isSignalList(t.text) {
            // A value, or alternatives of values and signals: `expect 5|7`, `expect 0|segv`.
            var wanted: [UInt64] = []
            for alt in t.text.split(separator: "|") where !ScriptChecker.signals.contains(String(alt)) || alt == "ok" {
                if alt == "ok" { return }
                wanted.append(try eval(Token(kind: .atom, text: String(alt), location: t.location), ctx))
            }
            if !wanted.contains(value) { throw failure(cmd, "expected \(t.text.contains("|") ? t.text : String(wanted.first ?? 0)), got \(value)") }
        } else {
            try expectSignal(cmd, nil)
        }
    }
}

/// `none`, `r`, `w`, `rw`, `rx`, `rwx` or a number.
func parseProtection(_ t: Token) throws -> Protection {
    switch t.text {
    case "none": return .none
    case "r": return .read
    case "w": return .write
    case "rw": return .readWrite
    case "rx": return [.read, .exec]
    case "rwx": return [.read, .write, .exec]
    default:
        if let v = UInt64(t.text.hasPrefix("0x") ? String(t.text.dropFirst(2)) : t.text, radix: t.text.hasPrefix("0x") ? 16 : 10), v <= 0xFFFF {
            return Protection(rawValue: Int32(v))
        }
        throw ScenarioSyntaxError(location: t.location, message: "expected a protection (none, r, w, rw, rx, rwx or a number), found '\(t.text)'")
    }
}
