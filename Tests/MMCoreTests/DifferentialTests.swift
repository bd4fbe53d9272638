import XCTest
@testable import Devices
@testable import HMM
@testable import MMCore
import MMSync

/// Random sequences of mmap, munmap, mprotect, mremap, madvise, fork, exit, loads and stores,
/// issued from several CPU threads of several processes, checked step by step against the
/// reference model (contents and errno) and the invariant checkers. A failure names its seed;
/// `DIFF_SEED=n` replays one sequence.
final class DifferentialTests: XCTestCase {
    static let window: UInt64 = 0x2000_0000
    static let windowPages: UInt64 = 48
    /// Frames left free for the processes of the swap variant (the rest of RAM is held).
    static let swapFreeFrames = 96
    /// The frames left with THP and swap: room for a few order-9 folios (and the huge zero
    /// folio), not for the window's working set (up to four processes' 4 MiB).
    static let thpSwapFreeFrames = 2048

    struct Proc {
        let process: Process
        let model: RefProcess
        let workers: [CPUWorker]
    }

    func testRandomSequencesAgainstReferenceModel() throws {
        if let s = ProcessInfoSeed.value {
            try runSequence(seed: s, steps: 200)
            return
        }
        let sequences = ProcessInfoSeed.sequences
        for seed in 1...UInt64(sequences) {
            try runSequence(seed: seed, steps: 60)
        }
        // The generator must actually reach every kind of outcome, or the test proves little.
        let c = coverage
        print("differential coverage: \(c.sorted { $0.key < $1.key })")
        for key in ["load nonzero", "load segv", "load bus", "store ok", "store segv", "errno EINVAL", "errno ENOMEM",
                    "errno EFAULT", "mremap moved", "fork", "exit", "cow copy"] {
            XCTAssertGreaterThan(c[key] ?? 0, 0, "never exercised: \(key)")
        }
    }

    /// The same with transparent huge pages (`always`) in a 4 MiB window where mappings and
    /// ranges are often 2 MiB-aligned and 2 MiB long: THP faults, fork sharing PMDs and COW,
    /// PMD splits by partial munmap/mprotect/mremap/MADV_DONTNEED, MADV_COLLAPSE, and
    /// migration to a device and back (device THP; CPU faults bring pages back). Collapse and
    /// migration results are not compared (they depend on what is mapped where, which the
    /// model does not track); every load, store and the final sweep are, and every invariant
    /// after every operation. 200 sequences of 500 operations (`DIFF_THP_SEQUENCES`).
    func testTHPRandomSequencesAgainstReferenceModel() throws {
        if let s = ProcessInfoSeed.value {
            try runSequence(seed: s, steps: 500, thp: true)
            return
        }
        let sequences = ProcessInfoSeed.getenvString("DIFF_THP_SEQUENCES").flatMap { Int($0) } ?? 200
        // Two runners (one machine per sequence, nothing shared but the tallies): the check
        // after every operation is most of the time, and the machines have two cores.
        let tally = Lock("tally")
        var stats: [MMStats.Counter: Int] = [:]
        var errors: [String] = []
        let runners = (0..<2).map { r in
            ModelThread.spawn(name: "diff\(r)") {
                var mine: [MMStats.Counter: Int] = [:]
                for seed in stride(from: UInt64(1 + r), through: UInt64(sequences), by: 2) {
                    if ProcessInfoSeed.getenvString("DIFF_VERBOSE") != nil { let line = "THP differential: seed \(seed)\n"; _ = line.withCString { write(2, $0, strlen($0)) } }
                    do { try self.runSequence(seed: seed, steps: 500, thp: true, stats: &mine) } catch {
                        tally.withLock { errors.append("seed \(seed): \(error)") }
                    }
                }
                tally.withLock { for (k, v) in mine { stats[k, default: 0] += v } }
            }
        }
        runners.forEach { $0.join() }
        XCTAssertEqual(errors, [])
        print("THP differential: \(sequences * 500) operations, \(stats.sorted { "\($0.key)" < "\($1.key)" }.map { "\($0.key) \($0.value)" })")
        for stat in [MMStats.Counter.thpFaultAlloc, .thpSplitPMD, .thpSplitPage, .thpCollapseAlloc, .faultDevicePrivate, .pagesMigratedToDevice] {
            XCTAssertGreaterThan(stats[stat] ?? 0, 0, "never exercised: \(stat)")
        }
        print("THP differential coverage: \(coverage.filter { $0.key.hasPrefix("collapse") || $0.key.hasPrefix("device") || $0.key.hasPrefix("MIGRATE") })")
        XCTAssertGreaterThan(coverage["device PMD"] ?? 0, 0, "never a device-private PMD")
        XCTAssertGreaterThan(coverage["collapse ok"] ?? 0, 0, "never a successful collapse")
    }

    /// The same under memory pressure: an 8 MiB machine whose hugetlb pool and held frames
    /// leave 256 frames (1 MiB) for the processes: page tables, per-CPU lists and a working set
    /// of up to four processes over a 3 MiB window, with 16 MiB of swap. Ranges are up to 64
    /// pages, a `fill` operation stores one word in every page of a range, and MADV_PAGEOUT and
    /// MADV_COLD join the advice (MADV_FREE leaves: reclaim may discard a lazily freed page,
    /// which the reference model does not follow). Direct reclaim swaps pages out under every
    /// operation; every load, store and the final sweep must still match the model, every
    /// invariant hold after every operation, and at the end every frame and swap slot be free.
    /// 100 sequences of 400 operations (`DIFF_SWAP_SEQUENCES`).
    func testSwapRandomSequencesAgainstReferenceModel() throws {
        if let s = ProcessInfoSeed.value {
            try runSequence(seed: s, steps: 400, swap: true)
            return
        }
        let sequences = ProcessInfoSeed.getenvString("DIFF_SWAP_SEQUENCES").flatMap { Int($0) } ?? 100
        var stats: [MMStats.Counter: Int] = [:]
        for seed in 1...UInt64(sequences) {
            do { try runSequence(seed: seed, steps: 400, thp: false, swap: true, stats: &stats) } catch {
                XCTFail("seed \(seed): \(error)")
            }
        }
        print("swap differential: \(sequences * 400) operations, \([MMStats.Counter.pswpout, .pswpin, .pgmajfault, .pgscanDirect, .pgstealDirect, .allocstall, .faultCOWCopy].map { "\($0.name) \(stats[$0] ?? 0)" })")
        for stat in [MMStats.Counter.pswpout, .pswpin, .pgstealDirect, .allocstall] {
            XCTAssertGreaterThan(stats[stat] ?? 0, 0, "never exercised: \(stat)")
        }
        XCTAssertGreaterThan(stats[.pswpin] ?? 0, sequences * 10, "swap-ins should be routine under this pressure")
    }

    /// The swap sequences on a swap file instead of a ramdisk: no `SWP_SYNCHRONOUS_IO`, so a
    /// swap-in reads ahead and the swap cache keeps what it read until swap is half full or a
    /// fault still has to write; reclaim drops a clean cached page without writing it again. Every
    /// result against the model (a page dropped clean that was written since would read back
    /// stale) and every invariant after every operation. `DIFF_SWAP_FILE_SEQUENCES` sets how many.
    func testSwapFileRandomSequencesAgainstReferenceModel() throws {
        if let s = ProcessInfoSeed.value {
            var stats: [MMStats.Counter: Int] = [:]
            try runSequence(seed: s, steps: 400, thp: false, swap: true, swapFile: true, stats: &stats)
            return
        }
        let sequences = ProcessInfoSeed.getenvString("DIFF_SWAP_FILE_SEQUENCES").flatMap { Int($0) } ?? 20
        var stats: [MMStats.Counter: Int] = [:]
        for seed in 1...UInt64(sequences) {
            do { try runSequence(seed: seed, steps: 400, thp: false, swap: true, swapFile: true, stats: &stats) } catch {
                XCTFail("seed \(seed): \(error)")
            }
        }
        print("swap file differential: \(sequences * 400) operations, \([MMStats.Counter.pswpout, .pswpin, .swapRa, .swapRaHit, .pgmajfault, .pgstealDirect].map { "\($0.name) \(stats[$0] ?? 0)" })")
        for stat in [MMStats.Counter.pswpout, .pswpin, .swapRa, .swapRaHit, .pgstealDirect] {
            XCTAssertGreaterThan(stats[stat] ?? 0, 0, "never exercised: \(stat)")
        }
    }

    /// THP (`always`) and swap together: a 16 MiB machine whose ballast leaves 8 MiB, 48 MiB
    /// of swap, the THP sequences' 4 MiB window (aligned 2 MiB mappings and ranges; no device
    /// migrations) from up to four processes: reclaim splits THPs to swap them
    /// (`thp_swpout_fallback`) while faults make new ones; every result against the model and
    /// every invariant after every operation. `DIFF_THP_SWAP_SEQUENCES` sets how many.
    func testTHPSwapRandomSequencesAgainstReferenceModel() throws {
        if let s = ProcessInfoSeed.value {
            try runSequence(seed: s, steps: 400, thp: true, swap: true)
            return
        }
        let sequences = ProcessInfoSeed.getenvString("DIFF_THP_SWAP_SEQUENCES").flatMap { Int($0) } ?? 30
        var stats: [MMStats.Counter: Int] = [:]
        for seed in 1...UInt64(sequences) {
            do { try runSequence(seed: seed, steps: 400, thp: true, swap: true, stats: &stats) } catch {
                XCTFail("seed \(seed): \(error)")
            }
        }
        print("THP swap differential: \(sequences * 400) operations, \([MMStats.Counter.thpFaultAlloc, .thpSwpoutFallback, .thpSplitPage, .pswpout, .pswpin, .allocstall].map { "\($0.name) \(stats[$0] ?? 0)" })")
        for stat in [MMStats.Counter.thpFaultAlloc, .thpSwpoutFallback, .pswpout, .pswpin, .allocstall] {
            XCTAssertGreaterThan(stats[stat] ?? 0, 0, "never exercised: \(stat)")
        }
    }

    private let coverageLock = Lock("coverage")
    private var _coverage: [String: Int] = [:]
    var coverage: [String: Int] { coverageLock.withLock { _coverage } }
    func cover(_ key: String, _ n: Int = 1) { coverageLock.withLock { _coverage[key, default: 0] += n } }

    func runSequence(seed: UInt64, steps: Int, thp: Bool = false, swap: Bool = false) throws {
        var stats: [MMStats.Counter: Int] = [:]
        try runSequence(seed: seed, steps: steps, thp: thp, swap: swap, stats: &stats)
    }

    func runSequence(seed: UInt64, steps: Int, thp: Bool, swap: Bool = false, swapFile: Bool = false,
                     stats: inout [MMStats.Counter: Int]) throws {
        var rng = SeededRNG(seed: seed)
        var ballast: [Page] = []
        let machine = try Machine(memoryBytes: thp ? (swap ? 16 << 20 : 32 << 20) : swap ? 8 << 20 : 16 << 20, devicePfnSpaceBytes: thp ? 1 << 30 : 0,
                                  swapBytes: swap ? (thp ? 48 << 20 : 16 << 20) : 0, swapBacking: swapFile ? .temporaryFile() : .memory)
        if thp { machine.memory.thp.mode = .always }
        if swap {
            let pools = machine.memory.hugetlb
            XCTAssertEqual(pools.setPoolSize(pools.defaultHState, 3), 3, "the ballast")
            let room = thp ? DifferentialTests.thpSwapFreeFrames : DifferentialTests.swapFreeFrames
            while machine.memory.freeFrames > room, let b = machine.memory.allocate() { ballast.append(b) }
        }
        defer { for b in ballast { machine.memory.put(b) } }
        let startFreeSlots = machine.memory.swap.freeSlots
        // Device migrations only without swap: a device's pages are backed by system frames
        // reclaim cannot take, so with swap's small RAM they could run it out (a true OOM the
        // reference model does not know of).
        let module = thp && !swap ? DmirrorModule(machine: machine) : nil
        var mirrors: [Int32: Dmirror] = [:]
        func mirror(_ p: Process) throws(Errno) -> Dmirror {
            if let d = mirrors[p.pid] { return d }
            let d = try module!.open(minor: 0, mm: p.mm)
            mirrors[p.pid] = d
            return d
        }
        let startUsed = machine.usedFrames
        var procs: [Proc] = []
        func spawn(_ p: Process, _ m: RefProcess) {
            procs.append(Proc(process: p, model: m, workers: (0..<2).map { CPUWorker(p, name: "cpu\(p.pid).\($0)") }))
        }
        spawn(try Process(machine: machine), RefProcess())
        var log: [String] = []
        func fail(_ msg: String, file: StaticString = #filePath, line: UInt = #line) {
            XCTFail("seed \(seed) step \(log.count): \(msg)\nlast steps:\n" + log.suffix(12).joined(separator: "\n"), file: file, line: line)
        }
        let W = DifferentialTests.window, N = thp ? 1024 : swap ? 768 : DifferentialTests.windowPages
        func page() -> UInt64 {
            if thp && Bool.random(using: &rng) { return W + UInt64.random(in: 0..<(N / 512), using: &rng) * pmdSize }
            return W + UInt64.random(in: 0..<N, using: &rng) * pageSize
        }
        func pages() -> UInt64 {
            if thp {
                switch Int.random(in: 0..<10, using: &rng) {
                case 0..<4: return UInt64.random(in: 1...2, using: &rng) * pmdSize
                case 4..<6: return UInt64.random(in: 1...1024, using: &rng) * pageSize
                default: break
                }
            }
            if swap && Bool.random(using: &rng) { return UInt64.random(in: 1...64, using: &rng) * pageSize }
            return UInt64.random(in: 1...8, using: &rng) * pageSize
        }
        /// An address inside a VMA the model knows of (most of the time), else anywhere.
        func mappedPage(_ m: RefProcess) -> UInt64 {
            if !m.vmas.isEmpty && Int.random(in: 0..<5, using: &rng) > 0 {
                let v = m.vmas[Int.random(in: 0..<m.vmas.count, using: &rng)]
                return v.start + UInt64.random(in: 0..<((v.end - v.start) >> 12), using: &rng) * pageSize
            }
            return page()
        }
        func word() -> UInt64 { [0, 8, 2048, 4088][Int.random(in: 0..<4, using: &rng)] }
        func prot() -> Protection {
            [Protection.none, .read, .readWrite, .readWrite, .readWrite, .readWrite, .readWrite, [.read, .exec], .write][Int.random(in: 0..<9, using: &rng)]
        }

        for _ in 0..<steps {
            let pi = Int.random(in: 0..<procs.count, using: &rng)
            let pr = procs[pi]
            let p = pr.process, m = pr.model
            let roll = Int.random(in: 0..<100, using: &rng)
            switch roll {
            case 0..<12: // mmap
                let len = Bool.random(using: &rng) ? pages() : UInt64.random(in: 0...3 * pageSize, using: &rng)
                let fixed = Int.random(in: 0..<5, using: &rng) > 0
                let at = fixed ? (Int.random(in: 0..<20, using: &rng) == 0 ? page() + 8 : page()) : 0
                let shared = Int.random(in: 0..<3, using: &rng) == 0
                let pr = prot()
                let got = Result { () throws(Errno) in
                    try p.mmap(address: at, length: len, prot: pr, flags: [shared ? .shared : .private, .anonymous, fixed ? .fixed : []])
                }
                let want = m.mmap(fixedAt: fixed ? at : nil, returned: try? got.get(), length: len, prot: pr, shared: shared)
                if case .failure(let e) = got { cover("errno \(e)") }
                log.append("p\(p.pid) mmap(\(hex(at)), \(len), \(pr.rawValue), \(shared ? "shared" : "private")\(fixed ? ", fixed" : "")) = \(got)")
                if !same(got, want) { fail("mmap: got \(got), model \(want)") }
            case 12..<20: // munmap
                let a = Int.random(in: 0..<15, using: &rng) == 0 ? page() + 16 : page()
                let len = Int.random(in: 0..<15, using: &rng) == 0 ? 0 : pages()
                let got = errno { () throws(Errno) in try p.munmap(a, length: len) }
                if let e = got { cover("errno \(e)") }
                log.append("p\(p.pid) munmap(\(hex(a)), \(len)) = \(String(describing: got))")
                let want = m.munmap(a, len)
                if got != want { fail("munmap: got \(String(describing: got)), model \(String(describing: want))") }
            case 20..<30: // mprotect
                let a = page(), len = pages()
                let pr = Int.random(in: 0..<20, using: &rng) == 0 ? Protection(rawValue: 0x40) : prot()
                let got = errno { () throws(Errno) in try p.mprotect(a, length: len, prot: pr) }
                if let e = got { cover("errno \(e)") }
                log.append("p\(p.pid) mprotect(\(hex(a)), \(len), \(pr.rawValue)) = \(String(describing: got))")
                let want = m.mprotect(a, len, pr)
                if got != want { fail("mprotect: got \(String(describing: got)), model \(String(describing: want))") }
            case 30..<36: // mremap
                let a = mappedPage(m)
                var oldLen = pages()
                // The kernel merges adjacent VMAs as the model here cannot predict (anon_vma and
                // accounting state); keep the source inside one of the model's VMAs, where both
                // agree. (The host-kernel differential checks the merges themselves.)
                if let v = m.vma(at: a), a + oldLen > v.end { oldLen = v.end - a }
                let newLen = Bool.random(using: &rng) ? oldLen : pages()
                var flags: MremapFlags = []
                if Bool.random(using: &rng) { flags.insert(.mayMove) }
                if Int.random(in: 0..<3, using: &rng) == 0 { flags.insert(.fixed) }
                if Int.random(in: 0..<4, using: &rng) == 0 { flags.insert(.dontUnmap) }
                let target = page()
                let got = Result { () throws(Errno) in try p.mremap(a, oldLength: oldLen, newLength: newLen, flags: flags, newAddress: target) }
                let want = m.mremap(a, oldLen, newLen, flags, target, returned: try? got.get())
                if case .failure(let e) = got { cover("errno \(e)") }
                if case .success(let to) = got, to != a { cover("mremap moved") }
                log.append("p\(p.pid) mremap(\(hex(a)), \(oldLen), \(newLen), \(flags.rawValue), \(hex(target))) = \(got)")
                if !same(got, want) { fail("mremap: got \(got), model \(want)") }
            case 36..<42 where thp && roll >= 38: // MADV_COLLAPSE, or migration to the device or back
                // Mostly the 2 MiB around a mapped page: where THPs are.
                let a = Int.random(in: 0..<4, using: &rng) > 0 ? mappedPage(m) & pmdMask : page()
                let len = Int.random(in: 0..<4, using: &rng) > 0 ? pmdSize : pages()
                switch module == nil ? 0 : Int.random(in: 0..<3, using: &rng) {
                case 0:
                    let got = errno { () throws(Errno) in try p.madvise(a, length: len, advice: .collapse) }
                    cover(got == nil ? "collapse ok" : "collapse \(got!)")
                    log.append("p\(p.pid) madvise(\(hex(a)), \(len), collapse) = \(String(describing: got))")
                case 1:
                    var cmd = DmirrorCmd(addr: a, npages: len / pageSize)
                    let got = errno { () throws(Errno) in try mirror(p).ioctl(.migrateToDevice, &cmd, buffer: DmirrorBuffer(size: Int(len))) }
                    log.append("p\(p.pid) MIGRATE_TO_DEV(\(hex(a)), \(len / pageSize)) = \(String(describing: got)) cpages \(cmd.cpages)")
                    cover("MIGRATE_TO_DEV \(got.map { "\($0)" } ?? "ok")")
                    if let f = p.mm.mmapLock.withRead({ p.mm.pageTable.lookup(a & pmdMask, level: .pmd) }),
                       PageTable.isTHPDevicePrivate(f.entry.load()) { cover("device PMD") }
                default:
                    var cmd = DmirrorCmd(addr: a, npages: len / pageSize)
                    let got = errno { () throws(Errno) in try mirror(p).ioctl(.migrateToSystem, &cmd) }
                    log.append("p\(p.pid) MIGRATE_TO_SYS(\(hex(a)), \(len / pageSize)) = \(String(describing: got)) cpages \(cmd.cpages)")
                }
            case 36..<42: // madvise
                let a = Int.random(in: 0..<3, using: &rng) == 0 ? page() : mappedPage(m), len = pages()
                let adv = (swap ? [MadviseAdvice.dontNeed, .pageout, .pageout, .cold, .normal, MadviseAdvice(rawValue: 77)]
                                : [MadviseAdvice.dontNeed, .dontNeed, .free, .normal, MadviseAdvice(rawValue: 77)])[Int.random(in: 0..<(swap ? 6 : 5), using: &rng)]
                let got = errno { () throws(Errno) in try p.madvise(a, length: len, advice: adv) }
                if let e = got { cover("errno \(e)") }
                log.append("p\(p.pid) madvise(\(hex(a)), \(len), \(adv.rawValue)) = \(String(describing: got))")
                let want = m.madvise(a, len, adv)
                if got != want { fail("madvise: got \(String(describing: got)), model \(String(describing: want))") }
            case 42..<46: // fork
                guard procs.count < 4 else { continue }
                let child = try p.fork()
                cover("fork")
                log.append("p\(p.pid) fork = p\(child.pid)")
                spawn(child, m.copy())
            case 46..<48: // exit
                guard procs.count > 1 else { continue }
                cover("exit")
                log.append("p\(p.pid) exit")
                pr.workers.forEach { $0.stop() }
                mirrors.removeValue(forKey: p.pid)?.close()
                p.exit()
                procs.remove(at: pi)
            case 48..<56 where swap: // fill: one word in every page of a range, in order
                let a = mappedPage(m) + word(), n = Int(pages() / pageSize)
                let base = rng.next()
                let w = pr.workers[Int.random(in: 0..<2, using: &rng)]
                var done = 0
                while done < n {
                    let at = a + UInt64(done) * pageSize, v = base &+ UInt64(done)
                    let got = w.run { cpu -> RefProcess.Access in
                        do throws(AccessFault) { try cpu.store(at, v); return .value(v) } catch { return error.refAccess }
                    }
                    let want = m.store(at, v)
                    if got != want { fail("fill at \(hex(at)): got \(got), model \(want)"); break }
                    done += 1
                    if got != .value(v) { break }
                }
                cover("fill")
                log.append("p\(p.pid) cpu\(w.cpu.index) fill(\(hex(a)), \(n) pages) stored \(done)")
            case 48..<75: // store
                let a = mappedPage(m) + word()
                let v = rng.next()
                let w = pr.workers[Int.random(in: 0..<2, using: &rng)]
                let got = w.run { cpu -> RefProcess.Access in
                    do throws(AccessFault) { try cpu.store(a, v); return .value(v) } catch { return error.refAccess }
                }
                cover(got == .segv ? "store segv" : got == .bus ? "store bus" : "store ok")
                log.append("p\(p.pid) cpu\(w.cpu.index) store(\(hex(a))) = \(got)")
                let want = m.store(a, v)
                if got != want { fail("store at \(hex(a)): got \(got), model \(want)") }
            default: // load
                let a = mappedPage(m) + word()
                let w = pr.workers[Int.random(in: 0..<2, using: &rng)]
                let got = w.run { cpu -> RefProcess.Access in
                    do throws(AccessFault) { return .value(try cpu.load(a, as: UInt64.self)) } catch { return error.refAccess }
                }
                cover(got == .segv ? "load segv" : got == .bus ? "load bus" : got == .value(0) ? "load zero" : "load nonzero")
                log.append("p\(p.pid) cpu\(w.cpu.index) load(\(hex(a))) = \(got)")
                let want = m.load(a)
                if got != want { fail("load at \(hex(a)): got \(got), model \(want)") }
            }
            if ProcessInfoSeed.value != nil, ProcessInfoSeed.getenvString("DIFF_VERBOSE") != nil, let l = log.last {
                let line = l + "\n"; _ = line.withCString { write(2, $0, strlen($0)) }
            }
            let problems = machine.checkInvariants() + (module?.checkInvariants() ?? [])
            if !problems.isEmpty { fail("invariants: \(problems)"); break }
        }
        // A full sweep of every word the model knows, from every process.
        for pr in procs {
            let w = pr.workers[0]
            var addrs = Set(pr.model.privateWords.keys)
            for v in pr.model.vmas { if let o = v.object { for k in o.words.keys where k >= v.objectOffset && k < v.objectOffset + v.end - v.start { addrs.insert(v.start + k - v.objectOffset) } } }
            for a in addrs.sorted() {
                let got = w.run { cpu -> RefProcess.Access in
                    do throws(AccessFault) { return .value(try cpu.load(a, as: UInt64.self)) } catch { return error.refAccess }
                }
                let want = pr.model.load(a)
                if got != want { fail("final sweep p\(pr.process.pid) at \(hex(a)): got \(got), model \(want)"); break }
            }
        }
        cover("cow copy", machine.stats[.faultCOWCopy])
        for stat in MMStats.Counter.allCases { stats[stat, default: 0] += machine.stats[stat] }
        for d in mirrors.values { d.close() }
        mirrors.removeAll()
        for pr in procs { pr.workers.forEach { $0.stop() }; pr.process.exit() }
        procs.removeAll()
        XCTAssertEqual(machine.checkInvariants(), [], "seed \(seed)")
        XCTAssertEqual(machine.usedFrames, startUsed, "seed \(seed): frames leaked")
        XCTAssertEqual(machine.memory.swap.freeSlots, startFreeSlots, "seed \(seed): swap slots leaked")
    }
}

enum ProcessInfoSeed {
    static var value: UInt64? { getenvString("DIFF_SEED").flatMap { UInt64($0) } }
    static var sequences: Int { getenvString("DIFF_SEQUENCES").flatMap { Int($0) } ?? 400 }
    static func getenvString(_ name: String) -> String? { getenv(name).map { String(cString: $0) } }
}

func hex(_ v: UInt64) -> String { "0x" + String(v, radix: 16) }

func errno(_ body: () throws(Errno) -> Void) -> Errno? {
    do { try body(); return nil } catch { return error }
}

func same(_ a: Result<UInt64, Errno>, _ b: Result<UInt64, Errno>) -> Bool {
    switch (a, b) {
    case (.success(let x), .success(let y)): return x == y
    case (.failure(let x), .failure(let y)): return x == y
    default: return false
    }
}

extension AccessFault {
    var refAccess: RefProcess.Access {
        switch self {
        case .segv: return .segv
        case .bus: return .bus
        case .oom: return .bus
        }
    }
}

extension Result where Failure == Errno {
    init(catching body: () throws(Errno) -> Success) {
        do { self = .success(try body()) } catch { self = .failure(error) }
    }
}
