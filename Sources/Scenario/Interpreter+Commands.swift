import Devices
import HMM
import MMCore
import MMSync

extension ScenarioInterpreter {
    func dispatch(_ cmd: Command, _ ctx: inout Context) throws {
        switch cmd.name.text {
        case "machine": try machineCommand(cmd)
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
        case "close": try closeCommand(cmd)
        case "mmap_device": try mmapDeviceCommand(cmd, ctx)
        case _ where ScenarioInterpreter.deviceCommands[cmd.name.text] != nil:
            try deviceCommand(cmd, ctx)
        case "gup": try gupCommand(cmd, ctx)
        case "put", "unpin": try putCommand(cmd)
        case "pagemap": try pagemapCommand(cmd, ctx)
        case "migrate_pages": try migratePagesCommand(cmd, ctx)
        case "invariants": try invariantsCommand(cmd)
        case "sleep":
            let ns = try eval(try cmd.arg(0, "nanoseconds"), ctx)
            guard ns <= 1_000_000_000 else { throw cmd.fail("expected a sleep of at most 1 s (1000000000 ns)") }
            syncSleep(nanoseconds: ns)
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

    func machineCommand(_ cmd: Command) throws {
        try cmd.allow(keys: ["memory"], positionals: 0)
        guard state.withLock({ machine == nil }) else { throw cmd.fail("expected 'machine' before anything that uses the machine") }
        if let m = cmd.option("memory") {
            let v = try Expression.evaluate(m) { _ in nil }
            guard v >= 8 << 20, v <= 16 << 30, v % pageSize == 0 else { throw ScenarioSyntaxError(location: m.location, message: "expected memory between 8MiB and 16GiB, a page multiple") }
            machineMemory = v
        }
        trace(cmd, "ok")
    }

    func processCommand(_ cmd: Command, _ ctx: inout Context) throws {
        try cmd.allow(keys: [], positionals: 1)
        let name = try cmd.arg(0, "a process name")
        guard isIdentifier(name.text) else { throw ScenarioSyntaxError(location: name.location, message: "expected a process name") }
        let m = try theMachine(at: cmd.name.location)
        try state.withLock {
            if processes[name.text] == nil {
                do { processes[name.text] = try MMCore.Process(machine: m) } catch { throw failure(cmd, "expected a new process, got \(error)") }
                processOrder.append(name.text)
            }
            currentProcess = name.text
        }
        ctx.process = name.text
        trace(cmd, "pid \(state.withLock { processes[name.text]!.pid })")
    }

    func useCommand(_ cmd: Command, _ ctx: inout Context) throws {
        try cmd.allow(keys: [], positionals: 1)
        let name = try cmd.arg(0, "a process name")
        _ = try process(named: name.text, at: name.location)
        state.withLock { currentProcess = name.text }
        ctx.process = name.text
    }

    func forkCommand(_ cmd: Command, _ ctx: Context) throws {
        try cmd.allow(keys: [], positionals: 1)
        guard let child = cmd.bind else { throw cmd.fail("expected '-> NAME' to name the child") }
        // A name may be reused once its process has exited (fork in a loop).
        guard state.withLock({ processes[child.text].map { $0.exited } ?? true }) else {
            throw ScenarioSyntaxError(location: child.location, message: "expected a new process name, '\(child.text)' is still running")
        }
        let parent = try process(named: cmd.optionalArg(0)?.text ?? ctx.process, at: cmd.name.location)
        try syscall(cmd, { try parent.fork() }) { p in
            state.withLock {
                if let old = processes[child.text] { cpus[ObjectIdentifier(old)] = nil } else { processOrder.append(child.text) }
                processes[child.text] = p
            }
            return "pid \(p.pid)"
        }
    }

    func exitCommand(_ cmd: Command, _ ctx: Context) throws {
        try cmd.allow(keys: [], positionals: 1)
        let name = cmd.optionalArg(0)?.text ?? ctx.process ?? state.withLock { currentProcess }
        let p = try process(named: name, at: cmd.name.location)
        if let c = state.withLock({ cpus.removeValue(forKey: ObjectIdentifier(p)) }) { c.detach() }
        // Devices opened on the process stay open (their mirrors see the release).
        p.exit()
        trace(cmd, "ok")
    }

    // MARK: system calls

    func parseProt(_ t: Token) throws -> Protection {
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

    func bindRegion(_ cmd: Command, _ address: UInt64, _ size: UInt64) {
        guard let b = cmd.bind else { return }
        state.withLock {
            variables[b.text] = address
            variables[b.text + ".size"] = size
            variables[b.text + ".end"] = address &+ size
            variables[b.text + ".pages"] = size / pageSize
        }
    }

    func mmapCommand(_ cmd: Command, _ ctx: Context) throws {
        try cmd.allow(keys: ["prot", "file", "offset", "fixed", "hint", "proc"], flags: ["shared", "private", "populate", "noreplace", "hugetlb"], positionals: 1)
        let proc = try process(for: cmd, ctx)
        let size = try eval(try cmd.arg(0, "a size"), ctx)
        let prot = try cmd.option("prot").map(parseProt) ?? .readWrite
        var flags: MapFlags = cmd.flag("shared") ? .shared : .private
        if cmd.flag("shared") && cmd.flag("private") { flags = [.shared, .private] }
        var file: ShmemFile? = nil
        if let f = cmd.option("file") {
            file = try state.withLock {
                guard let x = files[f.text] else { throw ScenarioSyntaxError(location: f.location, message: "expected a file created with 'file', got '\(f.text)'") }
                return x
            }
        } else {
            flags.insert(.anonymous)
        }
        var address: UInt64 = 0
        if let f = cmd.option("fixed") { address = try eval(f, ctx); flags.insert(cmd.flag("noreplace") ? .fixedNoReplace : .fixed) }
        if let h = cmd.option("hint") { address = try eval(h, ctx) }
        if cmd.flag("populate") { flags.insert(.populate) }
        if cmd.flag("hugetlb") { flags.insert(.hugetlb) }
        let offset = try cmd.option("offset").map { try eval($0, ctx) } ?? 0
        try syscall(cmd, { try proc.mmap(address: address, length: size, prot: prot, flags: flags, file: file, offset: offset) }) { a in
            bindRegion(cmd, a, (size + pageSize - 1) & pageMask)
            return "0x" + String(a, radix: 16)
        }
    }

    static let adviceNames: [String: MadviseAdvice] = [
        "normal": .normal, "random": .random, "sequential": .sequential, "willneed": .willNeed, "dontneed": .dontNeed,
        "free": .free, "dontfork": .dontFork, "dofork": .doFork, "hugepage": .hugePage, "nohugepage": .noHugePage,
    ]

    func rangeSyscall(_ cmd: Command, _ ctx: Context) throws {
        let isMadvise = cmd.name.text == "madvise", isMprotect = cmd.name.text == "mprotect"
        try cmd.allow(keys: ["proc"], positionals: isMadvise || isMprotect ? 3 : 2)
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
        trace(cmd, result?.name ?? "0")
        try checkErrno(cmd, result)
    }

    func mremapCommand(_ cmd: Command, _ ctx: Context) throws {
        try cmd.allow(keys: ["fixed", "proc"], flags: ["maymove", "dontunmap"], positionals: 3)
        let proc = try process(for: cmd, ctx)
        let a = try eval(try cmd.arg(0, "an address"), ctx)
        let old = try eval(try cmd.arg(1, "the old length"), ctx)
        let new = try eval(try cmd.arg(2, "the new length"), ctx)
        var flags: MremapFlags = []
        if cmd.flag("maymove") { flags.insert(.mayMove) }
        if cmd.flag("dontunmap") { flags.insert(.dontUnmap) }
        var target: UInt64 = 0
        if let f = cmd.option("fixed") { flags.insert(.fixed); target = try eval(f, ctx) }
        try syscall(cmd, { try proc.mremap(a, oldLength: old, newLength: new, flags: flags, newAddress: target) }) { r in
            bindRegion(cmd, r, (new + pageSize - 1) & pageMask)
            return "0x" + String(r, radix: 16)
        }
    }

    // MARK: files

    func fileCommand(_ cmd: Command, _ ctx: Context) throws {
        try cmd.allow(keys: ["size"], positionals: 1)
        let name = try cmd.arg(0, "a file name")
        let size = try cmd.option("size").map { try eval($0, ctx) } ?? 0
        guard size <= 1 << 40 else { throw cmd.fail("expected a file size of at most 1TiB") }
        let m = try theMachine(at: cmd.name.location)
        state.withLock { files[name.text] = ShmemFile(machine: m, size: size, name: name.text) }
        trace(cmd, "ok")
    }

    func fileNamed(_ t: Token) throws -> ShmemFile {
        try state.withLock {
            guard let f = files[t.text] else { throw ScenarioSyntaxError(location: t.location, message: "expected a file created with 'file', got '\(t.text)'") }
            return f
        }
    }

    func fileIO(_ cmd: Command, _ ctx: Context) throws {
        let f = try fileNamed(try cmd.arg(0, "a file"))
        switch cmd.name.text {
        case "ftruncate":
            try cmd.allow(keys: [], positionals: 2)
            var err: Errno? = nil
            do { try f.ftruncate(try eval(try cmd.arg(1, "a size"), ctx)) } catch let e as Errno { err = e }
            try checkErrno(cmd, err)
        case "pwrite":
            try cmd.allow(keys: ["index"], positionals: 4)
            let off = try eval(try cmd.arg(1, "an offset"), ctx)
            let len = try eval(try cmd.arg(2, "a length"), ctx)
            guard len <= ScenarioInterpreter.maxAccessBytes else { throw cmd.fail("expected a length of at most 256MiB") }
            let pattern = try Pattern.parse(try cmd.arg(3, "a pattern"), lookup(ctx))
            let index = try indexOption(cmd, ctx)
            var bytes = [UInt8](repeating: 0, count: Int(len))
            fillBytes(&bytes, pattern, index: index)
            var err: Errno? = nil
            do { try f.pwrite(offset: off, bytes: bytes) } catch let e as Errno { err = e }
            try checkErrno(cmd, err)
        default: // pread
            try cmd.allow(keys: ["index"], positionals: 3)
            let off = try eval(try cmd.arg(1, "an offset"), ctx)
            let len = try eval(try cmd.arg(2, "a length"), ctx)
            guard len <= ScenarioInterpreter.maxAccessBytes else { throw cmd.fail("expected a length of at most 256MiB") }
            let got: [UInt8]
            // The bare expectation is either data (a pattern) or an outcome (ok / an errno name).
            let expectsData = cmd.bareExpectations.first.map { $0.text != "ok" && parseErrno($0.text) == nil } ?? false
            do { got = try f.pread(offset: off, count: Int(len)) } catch let e as Errno {
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
        }
        trace(cmd, "ok")
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
        try cmd.allow(keys: ["index", "proc"], positionals: isFill ? 3 : 3)
        let proc = try process(for: cmd, ctx)
        let a = try eval(try cmd.arg(0, "an address"), ctx)
        let len = try eval(try cmd.arg(1, "a length"), ctx)
        guard len <= ScenarioInterpreter.maxAccessBytes else { throw cmd.fail("expected a length of at most 256MiB") }
        let index = try indexOption(cmd, ctx)
        let cpu = cpu(for: proc, ctx)
        if isFill {
            let pattern = try Pattern.parse(try cmd.arg(2, "a pattern"), lookup(ctx))
            var bytes = [UInt8](repeating: 0, count: Int(len))
            fillBytes(&bytes, pattern, index: index)
            do { try cpu.write(a, bytes) } catch { try expectSignal(cmd, error) ; return }
            try expectSignal(cmd, nil)
            trace(cmd, "ok")
        } else {
            let patternTok = cmd.optionalArg(2) ?? cmd.bareExpectations.first
            guard let pt = patternTok else { throw cmd.fail("expected a pattern to check against") }
            let pattern = try Pattern.parse(pt, lookup(ctx))
            let got: [UInt8]
            do { got = try cpu.read(a, count: Int(len)) } catch { throw failure(cmd, "expected \(pattern), got \(error)") }
            if let msg = compare(got, pattern, index: index) { throw failure(cmd, msg) }
            trace(cmd, "ok")
        }
    }

    /// `expect segv` / `expect bus` / default success for accesses.
    func expectSignal(_ cmd: Command, _ got: AccessFault?) throws {
        let want = cmd.bareExpectations.first { ["segv", "bus", "oom", "ok"].contains($0.text) }?.text ?? "ok"
        let gotName: String
        switch got { case .none: gotName = "ok"; case .segv?: gotName = "segv"; case .bus?: gotName = "bus"; case .oom?: gotName = "oom" }
        if want != gotName { throw failure(cmd, "expected \(want), got \(got.map { "\($0)" } ?? "success")") }
    }

    func access(_ cmd: Command, _ ctx: Context) throws {
        try cmd.allow(keys: ["proc"], flags: ["u8", "u16", "u32", "u64"], positionals: cmd.name.text == "load" ? 1 : (cmd.name.text == "store" ? 2 : 3))
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
            trace(cmd, "\(f)")
            try expectSignal(cmd, f)
            return
        }
        trace(cmd, cmd.name.text == "store" ? "ok" : "\(value)")
        if let t = cmd.bareExpectations.first, !["segv", "bus", "oom", "ok"].contains(t.text) {
            let want = try eval(t, ctx)
            if want != value { throw failure(cmd, "expected \(want), got \(value)") }
        } else {
            try expectSignal(cmd, nil)
        }
    }
}
