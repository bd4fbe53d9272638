import Devices
import HMM
import MMCore
import MMSync
#if canImport(Glibc)
import Glibc
#endif

extension ScenarioInterpreter {
    func device(_ t: Token, _ ctx: Context) throws -> Dmirror { try named(t, ctx, .device, \.devices) }

    func buffer(_ t: Token, _ ctx: Context) throws -> DmirrorBuffer { try named(t, ctx, .buffer, \.buffers) }

    /// Keeps a buffer under `name` within the host-memory budget (a buffer it replaces is freed).
    func keepBuffer(_ name: String, _ b: DmirrorBuffer, _ cmd: Command) throws {
        let old = state.withLock { buffers[name]?.count ?? 0 }
        try reserveHostMemory(UInt64(b.count), at: cmd, releasing: UInt64(old))
        state.withLock { buffers[name] = b }
    }

    /// `device_shootdown DEV [latency=NS] [two_phase] [fails] [expect finish_passes=N cut_off=0|1]`:
    /// the TLB shootdown of the dmirror device behind the open DEV (issue 17): its latency
    /// (unchanged if not given; at most 10 ms), waited for in the second pass of a two-pass
    /// invalidation with `two_phase` (else in the one pass), never confirmed with `fails` (a
    /// mirror of that device is then cut off at its next invalidation: no entries, commands
    /// EIO). Reports the device's finish passes so far and whether DEV was cut off.
    /// `svm_shootdown SVM …` is the same for an SVM device (cut off: its space of the process
    /// maps nothing again, and its faults are fatal with EIO).
    func deviceShootdownCommand(_ cmd: Command, _ ctx: Context) throws {
        let shootdown: DeviceShootdown, isCutOff: () -> Bool
        if cmd.name.text == "svm_shootdown" {
            let space = try svm(try cmd.arg(0, "an SVM device"), ctx)
            (shootdown, isCutOff) = (space.device.shootdown, { space.isCutOff })
        } else {
            let mirror = try device(try cmd.arg(0, "a device"), ctx)
            (shootdown, isCutOff) = (mirror.device.shootdown, { mirror.isCutOff })
        }
        if let l = cmd.option("latency") {
            let ns = try eval(l, ctx)
            guard ns <= 10_000_000 else { throw cmd.fail("expected latency=0…10000000 (ns)") }
            shootdown.latencyNanoseconds = ns
        }
        shootdown.twoPhase = cmd.flag("two_phase")
        shootdown.fails = cmd.flag("fails")
        let got: [String: UInt64] = ["finish_passes": UInt64(shootdown.finishPasses.load()), "cut_off": isCutOff() ? 1 : 0]
        trace(cmd, ctx, "latency \(shootdown.latencyNanoseconds) ns, finish_passes \(got["finish_passes"]!), cut_off \(got["cut_off"]!)")
        try checkCounters(cmd, ctx, got)
    }

    /// `buffer NAME SIZE [fill=PATTERN]` and `check_buffer NAME OFFSET LEN PATTERN [index=N]`.
    func bufferCommand(_ cmd: Command, _ ctx: Context) throws {
        if cmd.name.text == "check_buffer" {
            let b = try buffer(try cmd.arg(0, "a buffer"), ctx)
            let off = try eval(try cmd.arg(1, "an offset"), ctx), len = try eval(try cmd.arg(2, "a length"), ctx)
            guard off <= UInt64(b.count), len <= UInt64(b.count) - off else { throw cmd.fail("expected a range inside the buffer (\(b.count) bytes)") }
            let pattern = try Pattern.parse(try cmd.arg(3, "a pattern"), lookup(ctx))
            let index = try indexOption(cmd, ctx)
            let bytes = Array(b.bytes[Int(off)..<Int(off + len)])
            if let msg = compare(bytes, pattern, index: index) { throw failure(cmd, msg) }
            trace(cmd, ctx, "ok")
            return
        }
        let name = try cmd.arg(0, "a buffer name")
        let size = try eval(try cmd.arg(1, "a size"), ctx)
        guard size <= ScenarioInterpreter.maxAccessBytes else { throw cmd.fail("expected a buffer of at most 256MiB") }
        let pattern = try cmd.option("fill").map { try Pattern.parse($0, lookup(ctx)) }
        let n = try resolveName(name, ctx)
        let old = state.withLock { buffers[n]?.count ?? 0 }
        try reserveHostMemory(size, at: cmd, releasing: UInt64(old))
        let b = DmirrorBuffer(size: Int(size))
        if let p = pattern { try fill(b, p) }
        state.withLock { buffers[n] = b }
        trace(cmd, ctx, "ok")
    }

    func fill(_ b: DmirrorBuffer, _ p: Pattern) throws {
        for k in 0..<(b.count / 4) { b.bytes.storeBytes(of: p.int(k), toByteOffset: k * 4, as: UInt32.self) }
    }

    /// `open MINOR [proc=P] -> NAME`: opens /dev/hmm_dmirrorMINOR for a process.
    func openCommand(_ cmd: Command, _ ctx: Context) throws {
        guard let nameTok = cmd.bind else { throw cmd.fail("expected '-> NAME' to name the open device") }
        let name = try resolveName(nameTok, ctx)
        let proc = try process(for: cmd, ctx)
        let minor = try eval(try cmd.arg(0, "a device number (0–3)"), ctx)
        _ = try theMachine(at: cmd.name.location)
        guard let module = state.withLock({ module }) else { throw cmd.fail("expected a machine") }
        try syscall(cmd, ctx, { try module.open(minor: Int(min(minor, 1 << 20)), mm: proc.mm) }) { d in
            state.withLock { devices[name] = d }
            return "dmirror\(minor)"
        }
    }

    func closeCommand(_ cmd: Command, _ ctx: Context) throws {
        let t = try cmd.arg(0, "a device")
        let d = try device(t, ctx)
        d.close()
        let n = try resolveName(t, ctx)
        state.withLock { devices[n] = nil }
        trace(cmd, ctx, "0")
    }

    func mmapDeviceCommand(_ cmd: Command, _ ctx: Context) throws {
        let d = try device(try cmd.arg(0, "a device"), ctx)
        // mmap of the device file maps into the calling process; dmirror's mmap always maps
        // into the address space of the process that opened it.
        if let p = cmd.option("proc"), try process(named: try resolveName(p, ctx), at: p.location).mm !== d.mm {
            throw ScenarioSyntaxError(location: p.location, message: "expected the process that opened the device for 'mmap_device'")
        }
        let size = try eval(try cmd.arg(1, "a size"), ctx)
        let prot = try cmd.option("prot").map(parseProt) ?? .readWrite
        try syscall(cmd, ctx, { try d.mmapDevice(length: size, prot: prot, flags: cmd.flag("shared") ? .shared : .private) }) { a in
            bindRegion(cmd, ctx, a, (size + pageSize - 1) & pageMask)
            return "0x" + String(a, radix: 16)
        }
    }

    static let deviceCommands: [String: DmirrorCommand] = [
        "read": .read, "write": .write, "migrate_to_dev": .migrateToDevice, "migrate_to_sys": .migrateToSystem,
        "snapshot": .snapshot, "exclusive": .exclusive, "check_exclusive": .checkExclusive, "release": .release, "flags": .flags,
    ]

    /// The dmirror commands: `CMD DEV ADDR NPAGES [buffer=B] [-> B] expect ret=… cpages=…
    /// faults=… mirror=PATTERN bytes=LIST`.
    func deviceCommand(_ cmd: Command, _ ctx: Context) throws {
        let c = ScenarioInterpreter.deviceCommands[cmd.name.text]! // dispatch only sends these names
        let d = try device(try cmd.arg(0, "a device"), ctx)
        var dcmd: DmirrorCmd
        switch c {
        case .flags: dcmd = DmirrorCmd(addr: 0, npages: try eval(try cmd.arg(1, "a flags value"), ctx))
        case .release:
            dcmd = DmirrorCmd(addr: try cmd.optionalArg(1).map { try eval($0, ctx) } ?? 0, npages: try cmd.optionalArg(2).map { try eval($0, ctx) } ?? 1)
        default: dcmd = DmirrorCmd(addr: try eval(try cmd.arg(1, "an address"), ctx), npages: try eval(try cmd.arg(2, "a page count"), ctx))
        }
        // Keep every command's work bounded (a huge SNAPSHOT walks 32 pages per batch).
        guard c == .flags || dcmd.npages <= 1 << 20 else { throw cmd.fail("expected at most 1048576 pages for '\(cmd.name.text)'") }
        // Commands with a bounce buffer stay within the 256MiB access limit, whatever buffer is given.
        if [.read, .write, .migrateToDevice, .exclusive].contains(c) && dcmd.npages > ScenarioInterpreter.maxAccessBytes / pageSize {
            throw cmd.fail("expected at most \(ScenarioInterpreter.maxAccessBytes / pageSize) pages for '\(cmd.name.text)'")
        }
        var buf: DmirrorBuffer? = nil
        var transient: UInt64 = 0
        defer { releaseHostMemory(transient) }
        if let b = cmd.option("buffer") { buf = try buffer(b, ctx) } else if [.read, .write, .migrateToDevice, .snapshot, .exclusive].contains(c) {
            let bytes = c == .snapshot ? dcmd.npages : dcmd.npages &* pageSize
            guard bytes <= ScenarioInterpreter.maxAccessBytes else { throw cmd.fail("expected at most 256MiB of buffer for '\(cmd.name.text)'") }
            try reserveHostMemory(bytes, at: cmd)
            transient = bytes
            buf = DmirrorBuffer(size: Int(bytes))
        }
        if let f = cmd.option("from"), let b = buf { try fill(b, try Pattern.parse(f, lookup(ctx))) }
        if let bind = cmd.bind, let b = buf {
            // The buffer stays: its charge moves from this command to the name.
            let name = try resolveName(bind, ctx)
            let old = state.withLock { buffers[name]?.count ?? 0 }
            releaseHostMemory(UInt64(old))
            if transient > 0 { transient = 0 } else { try reserveHostMemory(UInt64(b.count), at: cmd) }
            state.withLock { buffers[name] = b }
        }
        var err: Errno? = nil
        do { try d.ioctl(c, &dcmd, buffer: buf) } catch { err = error }
        trace(cmd, ctx, "ret \(err.map { "-\($0.name)" } ?? "0") cpages \(dcmd.cpages) faults \(dcmd.faults)")
        try checkDeviceExpectations(cmd, ctx, err, dcmd, buf)
    }

    func checkDeviceExpectations(_ cmd: Command, _ ctx: Context, _ err: Errno?, _ dcmd: DmirrorCmd, _ buf: DmirrorBuffer?) throws {
        let ret = err.map { "-\($0.name)" } ?? "0"
        // `ret=0`, `ret=-EFAULT`, or alternatives `ret=0|-EFAULT` (other expectations then apply
        // only when the command succeeded).
        let wantRet = cmd.expectation("ret")?.text ?? "0"
        let alternatives = wantRet.split(separator: "|").map { alt -> String in
            alt == "0" ? "0" : (alt.hasPrefix("-") ? String(alt) : "-" + alt)
        }
        for alt in alternatives where alt != "0" && parseErrno(alt) == nil {
            throw ScenarioSyntaxError(location: cmd.expectation("ret")!.location, message: "expected ret=0 or ret=-ERRNO (alternatives separated by '|'), found '\(wantRet)'")
        }
        if alternatives.isEmpty || !alternatives.contains(ret) { throw failure(cmd, "expected ret=\(wantRet), got ret=\(ret)") }
        if ret != "0" { return }
        for a in cmd.expects {
            guard let k = a.key else { throw ScenarioSyntaxError(location: a.location, message: "expected key=value (ret, cpages, faults, mirror, bytes)") }
            switch k.text {
            case "ret": continue
            case "cpages", "faults":
                let want = try eval(a.value, ctx)
                let got = k.text == "cpages" ? dcmd.cpages : dcmd.faults
                if got != want { throw failure(cmd, "expected \(k.text)=\(want), got \(k.text)=\(got)") }
            case "mirror":
                guard let b = buf else { throw failure(cmd, "expected a buffer to check") }
                let pattern = try Pattern.parse(a.value, lookup(ctx))
                if let msg = compare(Array(b.bytes), pattern, index: 0) { throw failure(cmd, "mirror: " + msg) }
            case "bytes":
                guard let b = buf else { throw failure(cmd, "expected a buffer to check") }
                let want = try parseByteList(a.value)
                let got = Array(b.bytes.prefix(want.count))
                if got != want {
                    let i = zip(got, want).enumerated().first { $0.element.0 != $0.element.1 }?.offset ?? min(got.count, want.count)
                    throw failure(cmd, "expected byte \(i) = 0x\(String(want[min(i, want.count - 1)], radix: 16)), got \(i < got.count ? "0x" + String(got[i], radix: 16) : "nothing")")
                }
            default:
                throw ScenarioSyntaxError(location: k.location, message: "expected one of ret, cpages, faults, mirror, bytes; found '\(k.text)'")
            }
        }
    }

    // MARK: GUP, pagemap, migration, invariants

    func gupCommand(_ cmd: Command, _ ctx: Context) throws {
        guard let hTok = cmd.bind else { throw cmd.fail("expected '-> NAME' to name the pinned pages") }
        let h = try resolveName(hTok, ctx)
        let proc = try process(for: cmd, ctx)
        let a = try eval(try cmd.arg(0, "an address"), ctx), n = try eval(try cmd.arg(1, "a page count"), ctx)
        guard n <= 1 << 20 else { throw cmd.fail("expected at most 1048576 pages") }
        var flags: FollFlags = []
        if cmd.flag("write") { flags.insert(.write) }
        if cmd.flag("pin") { flags.insert(.pin) }
        if cmd.flag("longterm") { flags.insert(.longterm) }
        try syscall(cmd, ctx, { try proc.mm.getUserPages(a, count: Int(n), flags: flags) }) { pages in
            state.withLock { gups[h] = (proc.mm, pages, flags.contains(.pin)) }
            return "\(pages.count) pages"
        }
    }

    func putCommand(_ cmd: Command, _ ctx: Context) throws {
        let t = try cmd.arg(0, "a name bound by 'gup'")
        let n = try resolveName(t, ctx)
        guard let g = state.withLock({ gups.removeValue(forKey: n) }) else {
            throw ScenarioSyntaxError(location: t.location, message: "expected pages bound by 'gup', got '\(n)'")
        }
        if g.pin { g.mm.unpinUserPages(g.pages) } else { g.mm.putUserPages(g.pages) }
        trace(cmd, ctx, "ok")
    }

    /// The `[proc=P] ADDR [NPAGES]` operands of pagemap and migrate_pages (at most 2^20 pages).
    private func pageRange(_ cmd: Command, _ ctx: Context) throws -> (MMCore.Process, UInt64, UInt64) {
        let proc = try process(for: cmd, ctx)
        let a = try eval(try cmd.arg(0, "an address"), ctx)
        let n = try cmd.optionalArg(1).map { try eval($0, ctx) } ?? 1
        guard n <= 1 << 20 else { throw cmd.fail("expected at most 1048576 pages") }
        return (proc, a, n)
    }

    /// `pagemap ADDR [NPAGES] expect present|swap|none|file`: every page must match.
    func pagemapCommand(_ cmd: Command, _ ctx: Context) throws {
        let (proc, a, n) = try pageRange(cmd, ctx)
        let entries: [PagemapEntry]
        do { entries = try proc.mm.pagemap(a, count: Int(n)) } catch let e { trace(cmd, ctx, e.name); try checkErrno(cmd, e); return }
        for t in cmd.bareExpectations where !isOutcome(t.text) {
            for (i, e) in entries.enumerated() {
                let ok: Bool
                switch t.text {
                case "present": ok = e.isPresent
                case "swap": ok = e.isSwap && !e.isPresent
                case "none": ok = !e.isPresent && !e.isSwap  // neither (soft-dirty may be set)
                case "file": ok = e.isFileOrSharedAnon
                case "zero": ok = e.isPresent && e.pfn == 0
                default: throw ScenarioSyntaxError(location: t.location, message: "expected present, swap, none, file or zero")
                }
                if !ok { throw failure(cmd, "expected page \(i) \(t.text), got \(e)") }
            }
        }
        trace(cmd, ctx, entries.map { $0.isPresent ? "P" : ($0.isSwap ? "S" : "-") }.joined())
        if cmd.bareExpectations.contains(where: { isOutcome($0.text) }) || cmd.expectation("errno") != nil { try checkErrno(cmd, nil) }
    }

    /// `migrate_pages ADDR N [offline]`: a kernel thread migrates the system pages mapped at
    /// ADDR (present PTEs and device-exclusive entries, which map their page in 7.2). With
    /// `offline` it retries the pages that failed with EAGAIN or EBUSY until every one has
    /// moved, as `offline_pages` does (it loops until a signal); each round is a retry for the
    /// explorer's livelock bound, and the command gives up after `offlineRounds` rounds
    /// (explored) or `offlineNanoseconds` (real threads, yielding between rounds).
    func migratePagesCommand(_ cmd: Command, _ ctx: Context) throws {
        let (proc, a, n) = try pageRange(cmd, ctx)
        var pfns: [UInt64]
        do {
            pfns = try proc.mm.pagemap(a, count: Int(n)).compactMap { e in
                if e.isPresent { return e.pfn }
                if e.isSwap && e.swapType == SwapEntry.deviceExclusive { return e.swapOffset }
                return nil
            }
        } catch let e { trace(cmd, ctx, e.name); try checkErrno(cmd, e); return }
        var r = proc.machine.migratePages(pfns)
        if cmd.flag("offline") {
            var rounds = 1
            let deadline = monotonicNanoseconds() &+ Self.offlineNanoseconds
            let explored = Sync.scheduler != nil
            while true {
                pfns = r.failed.filter { $0.value == .EAGAIN || $0.value == .EBUSY }.map(\.key).sorted()
                if pfns.isEmpty { break }
                rounds += 1
                Sync.retryLoop(rounds, "offlining retried the migration of pfn \(pfns.map(String.init).joined(separator: ","))")
                // Under the explorer, rounds (a replay takes the same path); on real threads,
                // time: the page's holder may be descheduled, so each round yields the CPU.
                if explored ? rounds > Self.offlineRounds : monotonicNanoseconds() > deadline {
                    let bound = explored ? "\(Self.offlineRounds) rounds" : "\(Self.offlineNanoseconds / 1_000_000_000) s (\(rounds) rounds)"
                    throw failure(cmd, "expected offlining to migrate every page, gave up after \(bound) with \(r.failed.map { "pfn \($0.key) \($0.value.name)" }.sorted().joined(separator: ", "))")
                }
                if !explored { sched_yield() }
                let again = proc.machine.migratePages(pfns)
                for (old, new) in again.migrated { r.migrated[old] = new; r.failed[old] = nil }
                for (old, e) in again.failed { r.failed[old] = e }
            }
        }
        trace(cmd, ctx, "\(r.migrated.count) migrated, \(r.failed.count) failed")
        if !cmd.bareExpectations.isEmpty || cmd.expectation("errno") != nil { try checkErrno(cmd, nil) }
        if let m = cmd.expectation("migrated") {
            let want = try eval(m, ctx)
            if UInt64(r.migrated.count) != want { throw failure(cmd, "expected migrated=\(want), got migrated=\(r.migrated.count)") }
        }
    }

    /// How many rounds `migrate_pages … offline` tries under the explorer before it reports the
    /// pages it could not move (above the explorer's default retry bound, so the explorer
    /// reports the livelock), and how long it tries on real threads.
    static let offlineRounds = 10_000
    static let offlineNanoseconds: UInt64 = 10_000_000_000

    func invariantsCommand(_ cmd: Command, _ ctx: Context) throws {
        let m = try theMachine(at: cmd.name.location)
        let problems = m.checkInvariants() + (state.withLock { module }?.checkInvariants() ?? [])
        if !problems.isEmpty { throw failure(cmd, "expected every invariant to hold, got: " + problems.prefix(5).joined(separator: "; ")) }
        trace(cmd, ctx, "hold")
    }
}
