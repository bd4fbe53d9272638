import Devices
import HMM
import MMCore
import MMSync

/// The entry that maps one page: a PTE, or the PMD or PUD leaf covering the page (its pfn
/// moved to the page's own frame inside the huge page).
struct MappedEntry {
    let pte: PTE
    let level: PageTableLevel
}

/// The kind of one CPU page-table entry, as `ptes` decodes it: `pmd` and `pud` are present
/// pages mapped by a PMD or PUD leaf (a huge page).
enum PTEKind: String, CaseIterable {
    case none, present, pmd, pud, swap, migration, device_private, device_exclusive, hwpoison, marker
    static var names: [String] { allCases.map(\.rawValue) }

    init(_ e: MappedEntry) {
        let pte = e.pte
        if pte.isNone { self = .none; return }
        if pte.isPresent { self = e.level == .pmd ? .pmd : e.level == .pud ? .pud : .present; return }
        let e = pte.swapEntry
        if e.isSwapSlot { self = .swap } else if e.isMigration { self = .migration } else if e.isDevicePrivate { self = .device_private }
        else if e.isDeviceExclusive { self = .device_exclusive } else if e.isHwPoison { self = .hwpoison } else { self = .marker }
    }
}

/// Reads the CPU page-table entries of [start, end), every page (an empty entry where no table is).
struct PTEReader: PageWalker {
    let start: UInt64
    var entries: [MappedEntry]
    init(start: UInt64, count: Int) { self.start = start; entries = Array(repeating: MappedEntry(pte: .none, level: .pte), count: count) }
    var locksPTE: Bool { true }
    mutating func pteEntry(_ pte: EntryPointer, _ addr: UInt64, _ next: UInt64) -> WalkStep {
        entries[Int((addr - start) >> pageShift)] = MappedEntry(pte: pte.load(), level: .pte)
        return .next
    }
    mutating func pmdEntry(_ pmd: EntryPointer, table: Page, _ start: UInt64, _ end: UInt64) -> WalkStep {
        let v = pmd.load()
        guard v.isHuge || !v.isPresent else { return .next }
        leaf(v, .pmd, start, end)
        return .skip
    }
    mutating func pudLeaf(_ pud: EntryPointer, table: Page, _ start: UInt64, _ end: UInt64) -> WalkStep {
        leaf(pud.load(), .pud, start, end)
        return .skip
    }
    /// Every page under a huge leaf: the leaf, with the page's frame when present.
    private mutating func leaf(_ v: PTE, _ level: PageTableLevel, _ from: UInt64, _ to: UInt64) {
        var a = from
        while a < to {
            let e = v.isPresent ? PTE(raw: v.raw &+ ((a & (level.size - 1)) & pageMask)) : v
            entries[Int((a - start) >> pageShift)] = MappedEntry(pte: e, level: level)
            a += pageSize
        }
    }
}

extension ScenarioInterpreter {
    static let meminfoKeys = ["total", "free", "used", "anon", "file", "pagetables", "device_backing", "other",
                              "device_private", "device_coherent", "device_pages",
                              "hugetlb", "hugepages_total", "hugepages_free", "hugepages_rsvd", "hugepages_surp",
                              "swap_total", "swap_free", "swap_cached"]
    static let maxPTEsShown: UInt64 = 1 << 16

    func hex(_ v: UInt64) -> String { "0x" + String(v, radix: 16) }

    /// `vmas [proc=P] [expect count=N]`: the process's VMAs, one per line.
    func vmasCommand(_ cmd: Command, _ ctx: Context) throws {
        let proc = try process(for: cmd, ctx)
        let vmas = proc.mm.snapshotVMAs()
        emit("vmas \(processName(proc)): \(vmas.count)")
        for v in vmas { emit("  \(describe(v))") }
        try checkCounters(cmd, ctx, ["count": UInt64(vmas.count)])
    }

    func describe(_ v: VMA) -> String {
        var s = v.description + " \(v.length / pageSize) pages"
        if let f = v.file { s += " file=\(state.withLock { files.first { $0.value === f }?.key } ?? f.name)" }
        if v.flags.contains(.mixedMap) { s += " mixedmap" }
        if v.flags.contains(.dontCopy) { s += " dontfork" }
        return s
    }

    func processName(_ p: MMCore.Process) -> String {
        state.withLock { processes.first { $0.value === p }?.key } ?? "pid \(p.pid)"
    }

    /// The CPU page-table entries of `count` pages from `start`, read under the mmap lock.
    /// nil when the address space has exited (checked under the lock: an exit frees the tables).
    func readPTEs(_ mm: AddressSpace, _ start: UInt64, _ count: Int) -> [MappedEntry]? {
        var r = PTEReader(start: start, count: count)
        let live = mm.mmapLock.withRead { () -> Bool in
            guard !mm.isDead else { return false }
            if count > 0 { _ = mm.pageTable.walk(start, start + UInt64(count) * pageSize, &r) }
            return true
        }
        return live ? r.entries : nil
    }

    /// One entry decoded: kind, pfn, flags, and whose page it is.
    func describe(_ entry: MappedEntry, machine m: Machine) -> String {
        let pte = entry.pte
        guard !pte.isNone else { return "none" }
        let pfn = pte.isPresent ? pte.pfn : (pte.swapEntry.hasPfn ? pte.swapEntry.pfn : pte.swapEntry.offset)
        var s: String
        if pte.isPresent {
            s = entry.level == .pte ? "present pfn \(pfn)" : "\(entry.level) pfn \(pfn)"
            s += pte.isUser ? (pte.isWrite ? " rw" : " ro") : " prot_none"
            if pte.isDirty { s += " dirty" }
            if pte.isAccessed { s += " young" }
            if pte.isSpecial { s += " special" }
        } else {
            let e = pte.swapEntry
            switch PTEKind(entry) {
            case .swap: return "swap type \(e.type) slot \(e.offset)"
            case .migration: s = "migration\(e.isWrite ? " write" : (e.type == SwapEntry.migrationReadExclusive ? " read-exclusive" : " read")) pfn \(pfn)"
                if e.isMigrationDirty { s += " dirty" }
                if e.isMigrationYoung { s += " young" }
            case .device_private: s = "device_private \(e.isWrite ? "write" : "read") pfn \(pfn)"
            case .device_exclusive: s = "device_exclusive pfn \(pfn)"
            case .hwpoison: return "hwpoison pfn \(pfn)"
            default: return "marker \(e.type):\(e.offset)"
            }
        }
        guard m.memory.isValidPfn(pfn) else { return s }
        let page = m.memory.page(pfn).folioHead
        if pfn == 0 { return s + " (zero page)" }
        if page.test(.hugetlb) {
            return s + " (hugetlb\(page.isAnon ? " anon" : "") \(m.memory.hugetlb.hstates.first { $0.order == page.order }?.description ?? "?") page \(page.pfn), refcount \(page.refcount), mapcount \(page.mapcount))"
        }
        switch page.kind {
        case .devicePrivate, .deviceCoherent:
            let dev = m.memory.pagemap(of: page).flatMap { pg in state.withLock { module }?.devices.first { $0 === pg.owner } }
            s += " (\(page.kind == .devicePrivate ? "device-private" : "device-coherent") page of \(dev.map { "dmirror\($0.minor)" } ?? "a device"))"
        default:
            s += page.isAnon ? " (anon" : (page.file != nil ? " (file" : " (system")
            // The folio's references; the page's own mappings (its folio's PMD mappings included).
            s += ", refcount \(page.refcount), mapcount \(m.memory.page(pfn).totalMapcount))"
        }
        return s
    }

    /// `ptes ADDR [NPAGES] [proc=P] [expect KIND|KIND…]`: every entry decoded.
    func ptesCommand(_ cmd: Command, _ ctx: Context) throws {
        let proc = try process(for: cmd, ctx)
        let a = try eval(try cmd.arg(0, "an address"), ctx) & pageMask
        let n = try cmd.optionalArg(1).map { try eval($0, ctx) } ?? 1
        guard n <= ScenarioInterpreter.maxPTEsShown else { throw cmd.fail("expected at most \(ScenarioInterpreter.maxPTEsShown) pages for 'ptes'") }
        guard a <= taskSize, n <= (taskSize - a) / pageSize else { throw cmd.fail("expected a range inside the user address space") }
        let m = try theMachine(at: cmd.name.location)
        guard let entries = readPTEs(proc.mm, a, Int(n)) else { throw failure(cmd, "expected a live process, got one that has exited") }
        emit("ptes \(processName(proc)) \(hex(a)) \(n):")
        for (i, e) in entries.enumerated() { emit("  \(hex(a + UInt64(i) * pageSize)) \(describe(e, machine: m))") }
        for t in cmd.bareExpectations {
            let kinds = t.text.split(separator: "|").compactMap { PTEKind(rawValue: String($0)) }
            for (i, e) in entries.enumerated() where !kinds.contains(PTEKind(e)) {
                throw failure(cmd, "expected page \(i) (\(hex(a + UInt64(i) * pageSize))) \(t.text), got \(describe(e, machine: m))")
            }
        }
    }

    /// `device_pages DEV [expect count=N owned=N mirrored=N]`: the device memory in use on
    /// DEV's device (`count`), the part whose data DEV's mirror migrated (`owned`), and DEV's
    /// device page-table entries (`mirrored`).
    func devicePagesCommand(_ cmd: Command, _ ctx: Context) throws {
        let d = try device(try cmd.arg(0, "a device"), ctx)
        let census = d.device.pageCensus()
        let names = state.withLock { devices.filter { $0.value.device === d.device } }
        var owners: [String] = []
        for (id, count) in census.byMirror.sorted(by: { $0.key < $1.key }) {
            let who = id == 0 ? "unrecorded" : (names.first { $0.value.id == id }.map { $0.key } ?? "closed mirror #\(id)")
            owners.append("\(who) \(count)")
        }
        let owned = census.byMirror[d.id] ?? 0
        let kind = d.device.memoryType == .devicePrivate ? "device private" : "device coherent"
        var line = "device_pages \(resolvedText(cmd.positional[0], ctx)) (dmirror\(d.device.minor), \(kind)): "
        line += "\(census.inUse) in use in \(census.chunks) chunk" + (census.chunks == 1 ? "" : "s")
        if !owners.isEmpty { line += ", by owner: " + owners.joined(separator: ", ") }
        line += "; mirror entries \(d.entryCount)"
        emit(line)
        try checkCounters(cmd, ctx, ["count": UInt64(census.inUse), "owned": UInt64(owned), "mirrored": UInt64(d.entryCount)])
    }

    /// The machine's memory by kind, in pages.
    func meminfo(_ m: Machine) -> [String: UInt64] {
        let mem = m.memory
        var anon: UInt64 = 0, file: UInt64 = 0, tables: UInt64 = 0, swapCached: UInt64 = 0
        for pfn in 1..<mem.systemFrames {
            let p = mem.page(pfn)
            let f = p.flags, h = p.folioHead, hf = h.flags   // a THP's tail counts as its folio
            if f.contains(.buddy) || hf.contains(.reserved) || hf.contains(.hugetlb) || h.refcount == 0 { continue }
            if f.contains(.swapCache) { swapCached += 1 }
            if f.contains(.pageTable) { tables += 1 } else if p.isAnon { anon += 1 } else if p.file != nil { file += 1 }
        }
        var devPrivate: UInt64 = 0, devCoherent: UInt64 = 0
        for d in state.withLock({ module })?.devices ?? [] {
            let n = UInt64(d.pagesInUse)
            if d.memoryType == .devicePrivate { devPrivate += n } else { devCoherent += n }
        }
        let used = UInt64(mem.usedFrames)
        // /proc/meminfo's Hugetlb (here in base pages) and the default pool's HugePages_*.
        let huge = Dictionary(uniqueKeysWithValues: mem.hugetlb.meminfo())
        let hugetlb = huge["Hugetlb"]! * 1024 / pageSize
        let known = anon + file + tables + devPrivate + hugetlb
        return ["total": mem.systemFrames - 1, "free": UInt64(mem.freeFrames), "used": used, "anon": anon, "file": file,
                "pagetables": tables, "device_backing": devPrivate, "other": used > known ? used - known : 0,
                "device_private": devPrivate, "device_coherent": devCoherent, "device_pages": devPrivate + devCoherent,
                "hugetlb": hugetlb, "hugepages_total": huge["HugePages_Total"]!, "hugepages_free": huge["HugePages_Free"]!,
                "hugepages_rsvd": huge["HugePages_Rsvd"]!, "hugepages_surp": huge["HugePages_Surp"]!,
                "swap_total": UInt64(mem.swap.totalSlots), "swap_free": UInt64(mem.swap.freeSlots), "swap_cached": swapCached]
    }

    /// `hugepages N [size=2MiB|1GiB] [expect total=N free=N rsvd=N surp=N]`: writes the pool's
    /// `nr_hugepages` (growing takes free memory, shrinking never frees pages in use or
    /// reserved) and prints its counters.
    func hugepagesCommand(_ cmd: Command, _ ctx: Context) throws {
        let m = try theMachine(at: cmd.name.location)
        let pools = m.memory.hugetlb
        let count = try eval(try cmd.arg(0, "a page count"), ctx)
        var h = pools.defaultHState
        if let s = cmd.option("size") {
            let size = try eval(s, ctx)
            guard let found = pools.hstate(size: size) else { throw ScenarioSyntaxError(location: s.location, message: "expected a huge page size: 2MiB or 1GiB") }
            h = found
        }
        guard count <= m.memory.systemFrames >> UInt64(h.order) else { throw cmd.fail("expected at most \(m.memory.systemFrames >> UInt64(h.order)) pages of \(h) (the machine's memory)") }
        pools.setPoolSize(h, Int(count))
        let c = pools.counters(h)
        trace(cmd, ctx, "\(h.name): \(c)")
        try checkCounters(cmd, ctx, ["total": UInt64(c.total), "free": UInt64(c.free), "rsvd": UInt64(c.reserved), "surp": UInt64(c.surplus)])
    }

    /// `thp [always|madvise|never] [zero_page|no_zero_page]`: sets the machine's
    /// `transparent_hugepage/enabled` and `use_zero_page` (at most one of each) and prints them.
    func thpCommand(_ cmd: Command, _ ctx: Context) throws {
        let m = try theMachine(at: cmd.name.location)
        let modes = THPMode.allCases.filter { cmd.flag($0.description) }
        guard modes.count <= 1 else { throw cmd.fail("expected one mode: always, madvise or never") }
        let zero = ["zero_page", "no_zero_page"].filter { cmd.flag($0) }
        guard zero.count <= 1 else { throw cmd.fail("expected zero_page or no_zero_page, not both") }
        if let mode = modes.first { m.memory.thp.mode = mode }
        if let z = zero.first { m.memory.thp.useZeroPage = z == "zero_page" }
        trace(cmd, ctx, "transparent_hugepage: enabled \(m.memory.thp.mode), use_zero_page \(m.memory.thp.useZeroPage ? 1 : 0)")
    }

    /// `kswapd [start|stop]`: starts or stops the machine's background reclaim thread (off
    /// until started: a scenario's page counts stay exact unless it asks for one) and prints
    /// whether it runs.
    func kswapdCommand(_ cmd: Command, _ ctx: Context) throws {
        let m = try theMachine(at: cmd.name.location)
        guard !(cmd.flag("start") && cmd.flag("stop")) else { throw cmd.fail("expected start or stop, not both") }
        if cmd.flag("start") { m.startKswapd() }
        if cmd.flag("stop") { m.stopKswapd() }
        trace(cmd, ctx, "kswapd: \(m.kswapdRunning ? "running" : "stopped")")
    }

    /// `meminfo [expect KEY=N…]`: system memory by kind and device memory in use, in pages.
    func meminfoCommand(_ cmd: Command, _ ctx: Context) throws {
        let info = meminfo(try theMachine(at: cmd.name.location))
        emit("meminfo: " + ScenarioInterpreter.meminfoKeys.map { "\($0) \(info[$0]!)" }.joined(separator: ", ") + " (pages)")
        try checkCounters(cmd, ctx, info)
    }

    /// `vmstat [expect KEY=N…]`: the machine's event counters since it was made (the ones
    /// asked for, or every one that is not zero).
    func vmstatCommand(_ cmd: Command, _ ctx: Context) throws {
        let stats = try theMachine(at: cmd.name.location).stats
        let got = Dictionary(uniqueKeysWithValues: MMStats.Counter.allCases.map { ($0.name, UInt64(max(0, stats[$0]))) })
        let asked = Set(cmd.expects.compactMap { $0.key?.text })
        let shown = MMStats.Counter.allCases.map(\.name).filter { asked.isEmpty ? got[$0]! != 0 : asked.contains($0) }
        emit("vmstat: " + shown.map { "\($0) \(got[$0]!)" }.joined(separator: ", "))
        try checkCounters(cmd, ctx, got)
    }

    func checkCounters(_ cmd: Command, _ ctx: Context, _ got: [String: UInt64]) throws {
        for a in cmd.expects {
            guard let k = a.key, let g = got[k.text] else {
                throw ScenarioSyntaxError(location: a.location, message: "expected key=N with a key among \(got.keys.sorted().joined(separator: ", "))")
            }
            let want = try eval(a.value, ctx)
            if g != want { throw failure(cmd, "expected \(k.text)=\(want), got \(k.text)=\(g)") }
        }
    }

    /// `hmm inspect`: the final state of every live process and open device, then meminfo.
    func inspectFinalState() {
        guard let m = state.withLock({ machine }) else { emit("no machine was created"); return }
        let (procs, devs) = state.withLock { (processOrder.compactMap { n in processes[n].map { (n, $0) } }, devices.sorted { $0.key < $1.key }) }
        for (name, p) in procs {
            guard !p.mm.isDead else { emit("process \(name) (pid \(p.pid)): exited"); continue }
            let vmas = p.mm.snapshotVMAs()
            emit("process \(name) (pid \(p.pid)): \(vmas.count) VMA\(vmas.count == 1 ? "" : "s")")
            for v in vmas {
                emit("  \(describe(v))")
                // Runs of entries of one kind, so a large mapping stays readable.
                let count = Int(min(v.length / pageSize, ScenarioInterpreter.maxPTEsShown))
                guard let entries = readPTEs(p.mm, v.start, count) else { break }
                var i = 0
                while i < entries.count {
                    let kind = PTEKind(entries[i])
                    var j = i + 1
                    while j < entries.count && PTEKind(entries[j]) == kind { j += 1 }
                    let first = describe(entries[i], machine: m)
                    emit("    \(hex(v.start + UInt64(i) * pageSize))" + (j - i > 1 ? " +\(j - i) pages: \(kind.rawValue) (first: \(first))" : ": \(first)"))
                    i = j
                }
            }
        }
        for (name, d) in devs {
            let c = d.device.pageCensus()
            emit("device \(name) (dmirror\(d.device.minor)): \(d.entryCount) mirror entries, \(c.byMirror[d.id] ?? 0) device pages owned, \(c.inUse) in use on the device")
        }
        let info = meminfo(m)
        emit("meminfo: " + ScenarioInterpreter.meminfoKeys.map { "\($0) \(info[$0]!)" }.joined(separator: ", ") + " (pages)")
    }
}
