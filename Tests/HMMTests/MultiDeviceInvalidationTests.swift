import XCTest
@testable import Devices
@testable import HMM
@testable import MMCore
import MMSync

/// Several devices mirroring one address space (issue 17): dmirror's shootdown latency, waited
/// for in the notifier's one pass or in the second pass of Linux 7.2's two-pass interval
/// notifiers, and refused for a non-blockable range.
final class MultiDeviceInvalidationTests: XCTestCase {
    /// Four mirrors (one per dmirror device) with `pages` pages of `a` read into each.
    func fourMirrors(_ env: HMMEnv, _ a: UInt64, pages: Int) throws -> [Dmirror] {
        let mirrors = try (0..<4).map { try env.module.open(minor: $0, mm: env.mm) }
        for m in mirrors {
            var c = DmirrorCmd(addr: a, npages: UInt64(pages))
            try m.ioctl(.read, &c, buffer: DmirrorBuffer(size: pages * Int(pageSize)))
            XCTAssertEqual(m.entryCount, pages)
        }
        return mirrors
    }

    /// With two-phase invalidation every device's shootdown is waited for in a finish pass
    /// (one per device per invalidation), after all four dropped their entries; with it off,
    /// in the one pass (no finish pass). Either way every mirror lost exactly the range (and
    /// dmirror's one page past it) and the data are intact.
    func testFourDevicesWaitForTheirShootdownsInTheFinishPass() throws {
        let env = try HMMEnv()
        let a = try env.anon(16)
        for p in 0..<16 { try env.cpu.store(a + UInt64(p) * pageSize, UInt64(p + 1)) }
        let mirrors = try fourMirrors(env, a, pages: 16)
        for d in env.module.devices { d.invalidationLatencyNanoseconds = 200_000; d.twoPhaseInvalidation = true }
        try env.process.mprotect(a, length: 4 * pageSize, prot: .read)
        XCTAssertEqual(env.module.devices.map { $0.finishPasses.load() }, [1, 1, 1, 1])
        XCTAssertEqual(mirrors.map(\.entryCount), [11, 11, 11, 11]) // pages 0...4 gone
        for d in env.module.devices { d.twoPhaseInvalidation = false }
        try env.process.mprotect(a + 8 * pageSize, length: 4 * pageSize, prot: .read)
        XCTAssertEqual(env.module.devices.map { $0.finishPasses.load() }, [1, 1, 1, 1])
        XCTAssertEqual(mirrors.map(\.entryCount), [6, 6, 6, 6]) // pages 8...12 gone too
        for p in 0..<16 { XCTAssertEqual(try env.cpu.load(a + UInt64(p) * pageSize, as: UInt64.self), UInt64(p + 1)) }
        env.finish(mirrors)
    }

    /// A device that has to wait for its shootdown cannot take a non-blockable invalidation
    /// (the OOM reaper's): the core gets false (the kernel's -EAGAIN), every mirror keeps its
    /// entries, and the sequence is even again so readers are not held up. Without the
    /// latency the same range goes through.
    func testANonBlockableInvalidationIsRefusedByADeviceThatWouldWait() throws {
        let env = try HMMEnv()
        let a = try env.anon(8)
        for p in 0..<8 { try env.cpu.store(a + UInt64(p) * pageSize, UInt64(p)) }
        let mirrors = try fourMirrors(env, a, pages: 8)
        env.module.devices[2].invalidationLatencyNanoseconds = 50_000
        let range = MMUNotifierRange(start: a, end: a + 8 * pageSize, event: .clear, blockable: false)
        XCTAssertFalse(env.mm.notifiers.invalidateRangeStart(range))
        // The first two devices had invalidated (as in the kernel, the walk stops at the one
        // that refuses); the third refused before touching its table, the fourth was not called.
        XCTAssertEqual(mirrors.map(\.entryCount), [0, 0, 8, 8])
        XCTAssertEqual(env.mm.notifiers.currentSeq & 1, 0)
        env.module.devices[2].invalidationLatencyNanoseconds = 0
        XCTAssertTrue(env.mm.notifiers.invalidateRangeStart(range))
        env.mm.notifiers.invalidateRangeEnd(range)
        XCTAssertEqual(mirrors.map(\.entryCount), [0, 0, 0, 0])
        env.finish(mirrors)
    }
    /// The error path: a device that never confirms its shootdown has its mirror cut off
    /// before the invalidation returns (every entry gone, every command EIO after), in the
    /// one-pass and the two-phase form; the other mirrors lose only the range; the process
    /// runs on (a page the cut-off device holds comes back to the CPU with its bytes); nothing
    /// leaks.
    func testADeviceThatCannotInvalidateIsCutOff() throws {
        for twoPhase in [false, true] {
            let env = try HMMEnv()
            let a = try env.anon(8)
            for p in 0..<8 { try env.cpu.store(a + UInt64(p) * pageSize, UInt64(p + 100)) }
            let mirrors = try fourMirrors(env, a, pages: 8)
            var m = DmirrorCmd(addr: a + 7 * pageSize, npages: 1)
            try mirrors[1].ioctl(.migrateToDevice, &m, buffer: DmirrorBuffer(size: Int(pageSize)))
            XCTAssertEqual(m.cpages, 1)
            for d in env.module.devices { d.invalidationLatencyNanoseconds = 10_000; d.twoPhaseInvalidation = twoPhase }
            env.module.devices[1].shootdownFails = true
            try env.process.mprotect(a, length: 2 * pageSize, prot: .read)
            XCTAssertTrue(mirrors[1].isCutOff)
            // Two-phase: every device waited in its finish pass, the failing one too (cut off there).
            XCTAssertEqual(env.module.devices.map { $0.finishPasses.load() }, twoPhase ? [1, 1, 1, 1] : [0, 0, 0, 0])
            // The others lost page 7 to device 1's migration and pages 0...2 now; device 1 all.
            XCTAssertEqual(mirrors.map(\.entryCount), [4, 0, 4, 4], "two-phase \(twoPhase)")
            XCTAssertEqual(mirrors.map(\.isCutOff), [false, true, false, false])
            var c = DmirrorCmd(addr: a, npages: 8)
            XCTAssertThrowsError(try mirrors[1].ioctl(.read, &c, buffer: DmirrorBuffer(size: 8 * Int(pageSize)))) {
                XCTAssertEqual($0 as? Errno, .EIO)
            }
            try mirrors[0].ioctl(.read, &c, buffer: DmirrorBuffer(size: 8 * Int(pageSize)))
            XCTAssertEqual(mirrors[0].entryCount, 8)
            // The process runs on: the page on device 1 comes back, every byte right.
            for p in 0..<8 { XCTAssertEqual(try env.cpu.load(a + UInt64(p) * pageSize, as: UInt64.self), UInt64(p + 100)) }
            try env.cpu.store(a + 2 * pageSize, UInt64(7))
            env.module.devices[1].shootdownFails = false
            env.finish(mirrors)
        }
    }

    /// The SVM device beside three dmirror devices, all with a 200 µs two-phase shootdown: an
    /// invalidation of pages every device maps is waited for once per device in the finish
    /// pass; one of pages the SVM device does not map waits for nothing there (as xe skips a
    /// range without GPU mappings), while dmirror, which always shoots down, waits again; a
    /// non-blockable range is refused, by the SVM device only where it maps pages.
    func testTheSVMDeviceWaitsInTheFinishPassBesideThreeDmirrors() throws {
        let env = try HMMEnv()
        let a = try env.anon(16), b = try env.anon(4)
        for p in 0..<16 { try env.cpu.store(a + UInt64(p) * pageSize, UInt64(p + 1)) }
        let mirrors = Array(try fourMirrors(env, a, pages: 16).prefix(3))
        let gpu = try SVMDevice(machine: env.machine, capacityBytes: 4 << 20, policy: SVMRemoteMapPolicy())
        let space = try gpu.bind(env.mm)
        try gpu.launch(SVMWorkload.touch(base: a, pages: 16, write: false), on: space, engines: 2).wait()
        XCTAssertEqual(space.mappedPages, 16)
        for d in env.module.devices.prefix(3) { d.invalidationLatencyNanoseconds = 200_000; d.twoPhaseInvalidation = true }
        gpu.shootdown.latencyNanoseconds = 200_000
        gpu.shootdown.twoPhase = true
        try env.process.mprotect(a, length: 4 * pageSize, prot: .read)
        XCTAssertEqual(env.module.devices.prefix(3).map { $0.finishPasses.load() }, [1, 1, 1])
        XCTAssertEqual(gpu.shootdown.finishPasses.load(), 1)
        XCTAssertEqual(space.mappedPages, 12)
        XCTAssertEqual(mirrors.map(\.entryCount), [11, 11, 11])
        try env.process.mprotect(b, length: 4 * pageSize, prot: .read)
        XCTAssertEqual(env.module.devices.prefix(3).map { $0.finishPasses.load() }, [2, 2, 2])
        XCTAssertEqual(gpu.shootdown.finishPasses.load(), 1)
        let range = MMUNotifierRange(start: a + 8 * pageSize, end: a + 9 * pageSize, event: .clear, blockable: false)
        XCTAssertFalse(env.mm.notifiers.invalidateRangeStart(range))
        // Without the dmirrors' latencies: the SVM device refuses a non-blockable range only
        // where it holds entries.
        for d in env.module.devices.prefix(3) { d.invalidationLatencyNanoseconds = 0 }
        let elsewhere = MMUNotifierRange(start: b, end: b + 4 * pageSize, event: .clear, blockable: false)
        XCTAssertTrue(env.mm.notifiers.invalidateRangeStart(elsewhere))
        env.mm.notifiers.invalidateRangeEnd(elsewhere)
        XCTAssertFalse(env.mm.notifiers.invalidateRangeStart(range))
        XCTAssertEqual(gpu.shootdown.finishPasses.load(), 1)
        for p in 0..<16 { XCTAssertEqual(try env.cpu.load(a + UInt64(p) * pageSize, as: UInt64.self), UInt64(p + 1)) }
        XCTAssertEqual(space.checkInvariants(), [])
        try gpu.shutdown()
        env.finish(mirrors)
    }

    /// An SVM device whose shootdown fails is cut off: its space loses every entry before the
    /// invalidation returns, its next kernel faults fatally with EIO, the pages it held in its
    /// memory come back to the CPU with their bytes, a dmirror beside it keeps mirroring, and
    /// nothing leaks.
    func testAnSVMDeviceWhoseShootdownFailsIsCutOff() throws {
        let env = try HMMEnv()
        let pages = 16
        let a = try env.anon(pages)
        for i in 0..<(pages * 512) { try env.cpu.store(a + UInt64(i) * 8, UInt64(i) &+ 5) }
        let gpu = try SVMDevice(machine: env.machine, capacityBytes: 4 << 20, policy: SVMFirstTouchPolicy())
        let space = try gpu.bind(env.mm)
        try gpu.launch(SVMWorkload.stream(base: a, words: pages * 512), on: space, engines: 2).wait()
        XCTAssertEqual(space.localPages, pages)
        let mirror = try env.module.open(minor: 0, mm: env.mm)
        gpu.shootdown.latencyNanoseconds = 10_000
        gpu.shootdown.fails = true
        try env.process.mprotect(a, length: pageSize, prot: .read) // page 0 is on the device: its entry goes
        XCTAssertTrue(space.isCutOff)
        XCTAssertEqual(space.mappedPages, 0)
        XCTAssertEqual(gpu.freePages, gpu.capacityPages - pages) // the pages stay in device memory
        let k = try gpu.launch(SVMWorkload.touch(base: a + 4 * pageSize, pages: 1, write: false), on: space, engines: 1)
        XCTAssertThrowsError(try k.wait()) { e in XCTAssertEqual((e as? SVMFatalFault)?.errno, .EIO) }
        XCTAssertEqual(space.mappedPages, 0)
        // The process runs on: every word (brought back from device memory) holds the stream's value.
        for i in 0..<(pages * 512) where try env.cpu.load(a + UInt64(i) * 8, as: UInt64.self) != SVMWorkload.stream(UInt64(i) &+ 5) {
            XCTFail("word \(i)"); break
        }
        var c = DmirrorCmd(addr: a, npages: UInt64(pages))
        try mirror.ioctl(.read, &c, buffer: DmirrorBuffer(size: pages * Int(pageSize)))
        XCTAssertEqual(mirror.entryCount, pages)
        gpu.shootdown.fails = false
        try gpu.shutdown()
        XCTAssertEqual(gpu.freePages, gpu.capacityPages)
        env.finish([mirror])
    }

    /// Event serialisation with five devices, reading and writing, and two CPU threads: one
    /// thread writes its generation into the first half of the region's pages, unmaps the
    /// region, marks a spacer mapping that takes the freed frames, publishes the next
    /// generation and maps fresh pages at the same address; the other makes the region
    /// read-only and writable again and forks (children exit at once). Four dmirror threads
    /// (two with two-phase 20 µs shootdowns, one with a one-pass 20 µs shootdown, one with
    /// none; two of them also write) and an ODP NIC region (reads and writes) work on the
    /// region in a loop; writers fill the second half's pages with their own marker.
    /// - A read that began after a generation was published never sees an older one (that page
    ///   was freed by the munmap that had returned), nor the spacer's marker, and the written
    ///   half holds only zeroes and writers' markers.
    /// - No write lands after the invalidation that removed its page: every spacer page holds
    ///   exactly its marker and zeroes at the end (a write into a freed frame the spacer took
    ///   would show there).
    /// - The mirrors agree with the CPU's page table at the end, and invariants hold.
    func testNoDeviceReadsOrWritesAPageAfterTheInvalidationThatRemovedItReturned() throws {
        let env = try HMMEnv()
        let pages = 8, len = UInt64(pages) * pageSize
        let genPages = 4 // pages [0, 4) carry generations; [4, 8) are written by the devices
        let spacerMark: UInt32 = 0x7FFF_FFFF
        func marker(_ writer: Int) -> UInt32 { 0x4000_0000 | UInt32(writer) }
        let writers = [1, 3, 4] // dmirror 1 and 3, and the NIC (4)
        let a = try env.anon(pages)
        let mirrors = try (0..<4).map { try env.module.open(minor: $0, mm: env.mm) }
        for (i, d) in env.module.devices.enumerated() {
            d.invalidationLatencyNanoseconds = i < 3 ? 20_000 : 0
            d.twoPhaseInvalidation = i < 2
        }
        let generation = AtomicCounter(1), stop = AtomicCounter(0)
        let stale = AtomicCounter(0), reads = AtomicCounter(0), writes = AtomicCounter(0), rounds = 40
        let remapCPU = env.process.makeCPU(), protectCPU = env.process.makeCPU()
        let reserve = try env.anon(pages * rounds) // the spacers, mapped now, touched one round at a time
        // A fifth device: an ODP NIC region over the same addresses.
        let nic = ODPDevice(machine: env.machine)
        let mr = try nic.register(env.mm, address: a, length: len, access: .all)
        let remapper = ModelThread.spawn(name: "remapper") {
            for round in 0..<rounds {
                let g = UInt32(generation.load())
                for p in 0..<genPages {
                    // A store can meet the read-only window of the other thread: try again.
                    var tries = 0
                    while (try? remapCPU.store(a + UInt64(p) * pageSize, g)) == nil && tries < 100_000 { tries += 1 }
                }
                try! env.process.munmap(a, length: len)
                generation.add(1)
                // The freed frames go to a spacer mapping first (the allocator reuses the last
                // freed), marked with a value no generation or writer has: a stale read would
                // see it, a stale write would overwrite it (or the zeroes beside it).
                let spacer = reserve + UInt64(round) * len
                for p in 0..<pages { try! remapCPU.store(spacer + UInt64(p) * pageSize, spacerMark) }
                _ = try! env.process.mmap(address: a, length: len, prot: .readWrite, flags: [.private, .anonymous, .fixed])
            }
            stop.store(1)
        }
        let protector = ModelThread.spawn(name: "protector") {
            var i = 0
            while stop.load() == 0 {
                _ = try? env.process.mprotect(a, length: len, prot: .read)
                _ = try? env.process.mprotect(a, length: len, prot: .readWrite)
                _ = try? protectCPU.load(a, as: UInt32.self)
                if i % 8 == 0, let child = try? env.process.fork() { child.exit() }
                i += 1
            }
        }
        /// Checks one read of the whole region (page p's 32-bit words at `word(p, k)`).
        func check(before: Int, _ word: (Int, Int) -> UInt32) {
            for p in 0..<pages {
                if p < genPages {
                    let v = word(p, 0)
                    if v != 0 && (Int(v) < before || v == spacerMark) { stale.add(1) }
                } else {
                    for k in [0, 1, 1023] {
                        let v = word(p, k)
                        if v != 0 && !writers.map(marker).contains(v) { stale.add(1) }
                    }
                }
            }
        }
        let devicePart = (pages - genPages) * Int(pageSize)
        let deviceThreads = mirrors.enumerated().map { (i, m) in
            ModelThread.spawn(name: "device-\(i)") {
                let buf = DmirrorBuffer(size: Int(len))
                let out = DmirrorBuffer(size: devicePart)
                for k in 0..<(devicePart / 4) { out[int: k] = Int32(bitPattern: marker(i)) }
                var n = 0
                while stop.load() == 0 {
                    n += 1
                    if writers.contains(i) && n % 2 == 0 {
                        var c = DmirrorCmd(addr: a + UInt64(genPages) * pageSize, npages: UInt64(pages - genPages))
                        if (try? m.ioctl(.write, &c, buffer: out)) != nil { writes.add(1) }
                        continue
                    }
                    let before = generation.load()
                    var c = DmirrorCmd(addr: a, npages: UInt64(pages))
                    guard (try? m.ioctl(.read, &c, buffer: buf)) != nil else { continue }
                    reads.add(1)
                    check(before: before) { p, k in UInt32(bitPattern: buf[int: p * Int(pageSize) / 4 + k]) }
                }
            }
        }
        let nicReads = AtomicCounter(0), nicWrites = AtomicCounter(0)
        let nicThread = ModelThread.spawn(name: "nic") {
            let buf = UnsafeMutableRawPointer.allocate(byteCount: Int(len), alignment: 64)
            defer { buf.deallocate() }
            let out = UnsafeMutableRawPointer.allocate(byteCount: devicePart, alignment: 64)
            defer { out.deallocate() }
            for k in 0..<(devicePart / 4) { out.storeBytes(of: marker(4), toByteOffset: k * 4, as: UInt32.self) }
            var n = 0
            while stop.load() == 0 {
                n += 1
                if n % 2 == 0 {
                    let w: ()? = try? mr.access(a + UInt64(genPages) * pageSize, devicePart, write: true) { p, at, k in
                        p.copyMemory(from: out + at, byteCount: k)
                    }
                    if w != nil { nicWrites.add(1) }
                    continue
                }
                let before = generation.load()
                guard (try? mr.access(a, Int(len), write: false, { p, at, n in (buf + at).copyMemory(from: p, byteCount: n) })) != nil else { continue }
                nicReads.add(1)
                check(before: before) { p, k in buf.load(fromByteOffset: p * Int(pageSize) + k * 4, as: UInt32.self) }
            }
        }
        remapper.join()
        protector.join()
        deviceThreads.forEach { $0.join() }
        nicThread.join()
        mr.deregister()
        XCTAssertGreaterThan(nicReads.load(), 0)
        XCTAssertGreaterThan(nicWrites.load(), 0)
        XCTAssertGreaterThan(writes.load(), 0)
        XCTAssertGreaterThan(reads.load(), 0)
        // The spacers: exactly their marker and zeroes (no write landed in a freed frame).
        var badSpacers = 0
        for s in 0..<(rounds * pages) {
            let base = reserve + UInt64(s) * pageSize
            if try remapCPU.load(base, as: UInt32.self) != spacerMark { badSpacers += 1; continue }
            for k in [1, 2, 512, 1023] where try remapCPU.load(base + UInt64(k) * 4, as: UInt32.self) != 0 { badSpacers += 1; break }
        }
        XCTAssertEqual(badSpacers, 0, "a device wrote a page freed by a munmap that had returned")
        // The region as it is now: the written half holds zeroes or writers' markers only.
        for p in genPages..<pages {
            for k in [0, 1, 1023] {
                let v = try remapCPU.load(a + UInt64(p) * pageSize + UInt64(k) * 4, as: UInt32.self)
                XCTAssertTrue(v == 0 || writers.map(marker).contains(v), "page \(p) word \(k): \(v)")
            }
        }
        remapCPU.detach()
        protectCPU.detach()
        XCTAssertEqual(stale.load(), 0, "a device read a page freed by a munmap that had returned")
        XCTAssertEqual(generation.load(), rounds + 1)
        XCTAssertEqual(env.module.devices[0].finishPasses.load() > 0, true)
        XCTAssertEqual(env.module.devices[2].finishPasses.load(), 0)
        env.finish(mirrors)
    }
}
