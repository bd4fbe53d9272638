import XCTest
@testable import Devices
@testable import HMM
@testable import MMCore
import MMSync

/// The RDMA NIC with on-demand paging (issue 17): regions registered without pinning, NIC
/// page faults through `hmmRangeFault`, translations dropped by the regions' notifiers, RDMA
/// between two processes across MADV_DONTNEED, fork and migration to a dmirror device, atomics
/// shared with the CPU, and the pinned alternative.
final class ODPTests: XCTestCase {
    final class Env {
        let machine: Machine
        let module: DmirrorModule
        let a: MMCore.Process, b: MMCore.Process
        let cpuA: CPU, cpuB: CPU
        let nic: ODPDevice
        let qp: ODPQueuePair
        let used: Int
        /// With `swapFilePages`, a temporary swap file of that many slots.
        init(swapFilePages: UInt64 = 0) throws {
            machine = try Machine(memoryBytes: 64 << 20, devicePfnSpaceBytes: 1 << 30,
                                  swapBytes: swapFilePages == 0 ? 0 : (swapFilePages + 1) * pageSize, swapBacking: .temporaryFile())
            module = DmirrorModule(machine: machine)
            used = machine.usedFrames
            a = try MMCore.Process(machine: machine)
            b = try MMCore.Process(machine: machine)
            cpuA = a.makeCPU(); cpuB = b.makeCPU()
            nic = ODPDevice(machine: machine)
            qp = ODPQueuePair(device: nic)
        }
        func region(_ p: MMCore.Process, _ cpu: CPU, pages: Int, seed: UInt64) throws -> UInt64 {
            let r = try p.mmap(length: UInt64(pages) * pageSize, prot: .readWrite, flags: [.private, .anonymous])
            for i in 0..<(pages * 512) { try cpu.store(r + UInt64(i) * 8, seed &+ UInt64(i)) }
            return r
        }
        func finish(_ regions: [ODPMemoryRegion], file: StaticString = #filePath, line: UInt = #line) {
            qp.destroy()
            regions.forEach { $0.deregister() }
            XCTAssertEqual(nic.tableBytes.load(), 0, "translation tables left charged", file: file, line: line)
            XCTAssertEqual(machine.checkInvariants(), [], file: file, line: line)
            cpuA.detach(); cpuB.detach()
            a.exit(); b.exit()
            XCTAssertEqual(machine.checkInvariants(), [], file: file, line: line)
            XCTAssertEqual(machine.usedFrames - used, 0, "frames leaked", file: file, line: line)
        }
    }

    /// A WRITE of 16 pages from A's region to B's: each side's 16 pages fault in once (32 NIC
    /// page faults), B's CPU sees every word; a second WRITE runs warm (no fault).
    func testRDMAWriteBetweenTwoProcessesFaultsOnceThenRunsWarm() throws {
        let env = try Env()
        let src = try env.region(env.a, env.cpuA, pages: 16, seed: 1000)
        let dst = try env.region(env.b, env.cpuB, pages: 16, seed: 0)
        let mrA = try env.nic.register(env.a.mm, address: src, length: 16 * pageSize, access: .all)
        let mrB = try env.nic.register(env.b.mm, address: dst, length: 16 * pageSize, access: .all)
        XCTAssertEqual(mrA.mappedPages + mrB.mappedPages, 0) // nothing pinned, nothing faulted
        try env.qp.post(.write(local: mrA, localAddress: src, remote: mrB, remoteAddress: dst, length: 16 * Int(pageSize))).wait()
        XCTAssertEqual(env.nic.stats[.pageFaults], 32)
        for i in 0..<(16 * 512) { XCTAssertEqual(try env.cpuB.load(dst + UInt64(i) * 8, as: UInt64.self), 1000 &+ UInt64(i)) }
        try env.cpuA.store(src + 8, UInt64(7)) // a CPU write to a present writable page: no invalidation
        try env.qp.post(.write(local: mrA, localAddress: src + 8, remote: mrB, remoteAddress: dst + 8, length: 8)).wait()
        XCTAssertEqual(env.nic.stats[.pageFaults], 32)
        XCTAssertEqual(try env.cpuB.load(dst + 8, as: UInt64.self), 7)
        XCTAssertEqual(env.nic.stats[.bytes], 16 * Int(pageSize) + 8)
        env.finish([mrA, mrB])
    }

    /// A NIC WRITE into a page that sits clean in a swap file's swap cache (read back by the
    /// CPU: mapped writable, not dirty). The NIC sets no dirty bit anywhere, so its writable
    /// translation dirties the page when the invalidation takes it (`ib_umem_odp_unmap_dma_pages`'
    /// `set_page_dirty`): MADV_PAGEOUT writes the page out instead of dropping it, and B's CPU
    /// reads the NIC's bytes back.
    func testANICWriteToACleanSwapCachePageIsWrittenOutNotDropped() throws {
        let env = try Env(swapFilePages: 64)
        let src = try env.region(env.a, env.cpuA, pages: 1, seed: 500)
        let dst = try env.region(env.b, env.cpuB, pages: 1, seed: 0)
        try env.b.madvise(dst, length: pageSize, advice: .pageout)
        XCTAssertEqual(try env.cpuB.load(dst + 8, as: UInt64.self), 1, "swapped back in")
        XCTAssertEqual(env.machine.stats[.pswpout], 1)
        XCTAssertEqual(env.machine.memory.swap.freeSlots, 63, "the swap file keeps the page's slot")
        let mrA = try env.nic.register(env.a.mm, address: src, length: pageSize, access: .all)
        let mrB = try env.nic.register(env.b.mm, address: dst, length: pageSize, access: .all)
        try env.qp.post(.write(local: mrA, localAddress: src, remote: mrB, remoteAddress: dst, length: Int(pageSize))).wait()
        try env.b.madvise(dst, length: pageSize, advice: .pageout)
        XCTAssertEqual(env.machine.stats[.pswpout], 2, "written out, not dropped clean")
        for i in 0..<512 { XCTAssertEqual(try env.cpuB.load(dst + UInt64(i) * 8, as: UInt64.self), 500 &+ UInt64(i), "word \(i)") }
        env.finish([mrA, mrB])
    }

    /// Between RDMA READs of B's region: page 5 migrated to a dmirror device (the NIC's fault
    /// brings it back with its bytes), MADV_DONTNEED on page 3 (its translation goes; the READ
    /// brings zeroes), a fork and a CPU write to page 0 (copy-on-write in B: the NIC reads B's
    /// new page, not the one the child keeps).
    func testRDMAReadAcrossDontneedForkAndMigration() throws {
        let env = try Env()
        let pages = 8
        let dst = try env.region(env.a, env.cpuA, pages: pages, seed: 0)
        let src = try env.region(env.b, env.cpuB, pages: pages, seed: 500)
        let mrA = try env.nic.register(env.a.mm, address: dst, length: UInt64(pages) * pageSize, access: .all)
        let mrB = try env.nic.register(env.b.mm, address: src, length: UInt64(pages) * pageSize, access: .all)
        func readAll() throws {
            try env.qp.post(.read(local: mrA, localAddress: dst, remote: mrB, remoteAddress: src, length: pages * Int(pageSize))).wait()
        }
        try readAll()
        XCTAssertEqual(mrB.mappedPages, pages)
        let mirror = try env.module.open(minor: 0, mm: env.b.mm)
        var m = DmirrorCmd(addr: src + 5 * pageSize, npages: 1)
        try mirror.ioctl(.migrateToDevice, &m, buffer: DmirrorBuffer(size: Int(pageSize)))
        XCTAssertEqual(m.cpages, 1)
        XCTAssertEqual(mrB.mappedPages, pages - 1) // the migration dropped page 5's translation
        try env.b.madvise(src + 3 * pageSize, length: pageSize, advice: .dontNeed)
        XCTAssertEqual(mrB.mappedPages, pages - 2)
        let child = try env.b.fork()
        try env.cpuB.store(src, UInt64(42)) // copy-on-write: B's page 0 is a new page now
        try readAll()
        for i in 0..<(pages * 512) {
            let want: UInt64 = i == 0 ? 42 : i / 512 == 3 ? 0 : 500 &+ UInt64(i)
            let got = try env.cpuA.load(dst + UInt64(i) * 8, as: UInt64.self)
            if got != want { XCTFail("word \(i): \(got), want \(want)"); break }
        }
        let ccpu = child.makeCPU()
        XCTAssertEqual(try ccpu.load(src, as: UInt64.self), 500) // the child kept the old page
        ccpu.detach()
        child.exit()
        mirror.close()
        env.finish([mrA, mrB])
    }

    /// Two queue pairs' fetch-and-adds and a CPU thread's on one word of B: exact. A
    /// compare-and-swap returns the old value and swaps only when it matched.
    func testAtomicsFromTwoQueuePairsAndTheCPUAreExact() throws {
        let env = try Env()
        let word = try env.region(env.b, env.cpuB, pages: 1, seed: 0)
        let mr = try env.nic.register(env.b.mm, address: word, length: 8, access: .all)
        let qp2 = ODPQueuePair(device: env.nic)
        let cpu = env.b.makeCPU()
        let t = ModelThread.spawn(name: "cpu-adds") { for _ in 0..<500 { _ = try? cpu.fetchAdd(word, 1) } }
        var works: [ODPWork] = []
        for _ in 0..<500 {
            works.append(env.qp.post(.fetchAdd(remote: mr, address: word, add: 1)))
            works.append(qp2.post(.fetchAdd(remote: mr, address: word, add: 1)))
        }
        for w in works { try w.wait() }
        t.join()
        cpu.detach()
        XCTAssertEqual(try env.cpuB.load(word, as: UInt64.self), 1500)
        XCTAssertEqual(try env.qp.post(.compareSwap(remote: mr, address: word, compare: 1, swap: 9)).wait(), 1500)
        XCTAssertEqual(try env.qp.post(.compareSwap(remote: mr, address: word, compare: 1500, swap: 9)).wait(), 1500)
        XCTAssertEqual(try env.cpuB.load(word, as: UInt64.self), 9)
        XCTAssertThrowsError(try env.qp.post(.fetchAdd(remote: mr, address: word + 4, add: 1)).wait()) { XCTAssertEqual($0 as? Errno, .EINVAL) }
        let ro = try env.nic.register(env.b.mm, address: word, length: 8, access: [.remoteRead])
        XCTAssertThrowsError(try env.qp.post(.fetchAdd(remote: ro, address: word, add: 1)).wait()) { XCTAssertEqual($0 as? Errno, .EPERM) }
        XCTAssertThrowsError(try ro.advise(word, length: 8, write: true)) { XCTAssertEqual($0 as? Errno, .EPERM) } // no write fault
        try ro.advise(word, length: 8, write: false)
        XCTAssertThrowsError(try env.qp.post(.fetchAdd(remote: mr, address: word + 8, add: 1)).wait()) { XCTAssertEqual($0 as? Errno, .EFAULT) }
        qp2.destroy()
        env.finish([mr, ro])
    }

    /// A pinned region: every page pinned at registration, no NIC page fault ever; a munmap
    /// in the target leaves the NIC writing the pinned pages (the process no longer sees
    /// them, as with real pinned RDMA); deregistration unpins them and nothing leaks.
    func testAPinnedRegionNeverFaultsAndUnpinsOnDeregistration() throws {
        let env = try Env()
        let src = try env.region(env.a, env.cpuA, pages: 4, seed: 77)
        let dst = try env.region(env.b, env.cpuB, pages: 4, seed: 0)
        let mrA = try env.nic.register(env.a.mm, address: src, length: 4 * pageSize, access: .all, pinned: true)
        let mrB = try env.nic.register(env.b.mm, address: dst, length: 4 * pageSize, access: .all, pinned: true)
        XCTAssertEqual(mrA.mappedPages + mrB.mappedPages, 8)
        try env.qp.post(.write(local: mrA, localAddress: src, remote: mrB, remoteAddress: dst, length: 4 * Int(pageSize))).wait()
        XCTAssertEqual(env.nic.stats[.pageFaults], 0)
        XCTAssertEqual(try env.cpuB.load(dst + 8 * 1000, as: UInt64.self), 77 + 1000)
        try env.b.munmap(dst, length: 4 * pageSize)
        XCTAssertThrowsError(try env.cpuB.load(dst, as: UInt64.self)) // B no longer sees them
        try env.cpuA.store(src, UInt64(123456))
        try env.qp.post(.write(local: mrA, localAddress: src, remote: mrB, remoteAddress: dst, length: 8)).wait()
        // The NIC wrote B's old (pinned) page: reading it back through the NIC gives the value.
        let back = try env.region(env.a, env.cpuA, pages: 1, seed: 0)
        let mrBack = try env.nic.register(env.a.mm, address: back, length: 8, access: .all)
        try env.qp.post(.read(local: mrBack, localAddress: back, remote: mrB, remoteAddress: dst, length: 8)).wait()
        XCTAssertEqual(try env.cpuA.load(back, as: UInt64.self), 123456)
        XCTAssertEqual(env.nic.stats[.pageFaults], 1) // only the ODP region's one page
        env.finish([mrA, mrB, mrBack])
    }

    /// RDMA WRITEs from A into B between which B's page 5 is migrated to a dmirror device (the
    /// NIC's write fault brings it back), page 3 is dropped by MADV_DONTNEED (refaulted as a
    /// new zero page and written), and B forks (the fork write-protects B's pages and drops
    /// every translation; the NIC's write fault breaks copy-on-write in B, and the child keeps
    /// the bytes it had). Every word exact after each WRITE; exact NIC page faults.
    func testRDMAWriteAcrossMigrationDontneedAndFork() throws {
        let env = try Env()
        let pages = 8, words = pages * 512
        let src = try env.region(env.a, env.cpuA, pages: pages, seed: 100)
        let dst = try env.region(env.b, env.cpuB, pages: pages, seed: 0)
        let mrA = try env.nic.register(env.a.mm, address: src, length: UInt64(pages) * pageSize, access: .all)
        let mrB = try env.nic.register(env.b.mm, address: dst, length: UInt64(pages) * pageSize, access: .all)
        var seed: UInt64 = 100
        func writeAll(newSeed: UInt64, faults: Int) throws {
            for i in 0..<words { try env.cpuA.store(src + UInt64(i) * 8, newSeed &+ UInt64(i)) }
            let before = env.nic.stats[.pageFaults]
            try env.qp.post(.write(local: mrA, localAddress: src, remote: mrB, remoteAddress: dst, length: pages * Int(pageSize))).wait()
            XCTAssertEqual(env.nic.stats[.pageFaults] - before, faults, "NIC page faults of the WRITE with seed \(newSeed)")
            seed = newSeed
            for i in 0..<words {
                let got = try env.cpuB.load(dst + UInt64(i) * 8, as: UInt64.self)
                if got != seed &+ UInt64(i) { XCTFail("seed \(seed), word \(i): \(got)"); return }
            }
        }
        try writeAll(newSeed: 100, faults: 2 * pages) // cold: both sides
        let mirror = try env.module.open(minor: 0, mm: env.b.mm)
        var m = DmirrorCmd(addr: dst + 5 * pageSize, npages: 1)
        try mirror.ioctl(.migrateToDevice, &m, buffer: DmirrorBuffer(size: Int(pageSize)))
        XCTAssertEqual(m.cpages, 1)
        XCTAssertEqual(mrB.mappedPages, pages - 1)
        try writeAll(newSeed: 2000, faults: 1) // page 5 comes back from the device
        try env.b.madvise(dst + 3 * pageSize, length: pageSize, advice: .dontNeed)
        XCTAssertEqual(mrB.mappedPages, pages - 1)
        try writeAll(newSeed: 3000, faults: 1) // page 3: a new page
        let child = try env.b.fork()
        XCTAssertEqual(mrB.mappedPages, 0) // the fork write-protected B's pages: every translation went
        XCTAssertEqual(mrA.mappedPages, pages)
        try writeAll(newSeed: 4000, faults: pages) // copy-on-write broken by the NIC in B
        let ccpu = child.makeCPU()
        for i in 0..<words {
            let got = try ccpu.load(dst + UInt64(i) * 8, as: UInt64.self)
            if got != 3000 &+ UInt64(i) { XCTFail("child word \(i): \(got)"); break }
        }
        ccpu.detach()
        child.exit()
        mirror.close()
        env.finish([mrA, mrB])
    }

    /// An implicit region (address 0, length `UInt64.max`) covers B's whole address space: a
    /// WRITE to two mappings a GiB apart makes two children (one notifier each) and faults
    /// exactly the pages touched; MADV_DONTNEED drops one translation; an address with no
    /// mapping or past the top of user space is EFAULT; a pinned implicit region is EINVAL;
    /// after deregistration every access is EINVAL and nothing leaks.
    func testImplicitRegionCoversTheWholeAddressSpace() throws {
        let env = try Env()
        let src = try env.region(env.a, env.cpuA, pages: 4, seed: 9000)
        let base: UInt64 = 0x7f00_0000_0000
        let low = try env.b.mmap(address: base, length: 2 * pageSize, prot: .readWrite, flags: [.private, .anonymous, .fixed])
        let high = try env.b.mmap(address: base + (1 << 30), length: 2 * pageSize, prot: .readWrite, flags: [.private, .anonymous, .fixed])
        XCTAssertThrowsError(try env.nic.register(env.b.mm, address: 0, length: .max, access: .all, pinned: true)) { XCTAssertEqual($0 as? Errno, .EINVAL) }
        // An explicit region whose table (8 bytes a page) would not fit in the machine's 64 MiB.
        XCTAssertThrowsError(try env.nic.register(env.b.mm, address: 0, length: base, access: .all)) { XCTAssertEqual($0 as? Errno, .ENOMEM) }
        let mrA = try env.nic.register(env.a.mm, address: src, length: 4 * pageSize, access: .all)
        let mrB = try env.nic.register(env.b.mm, address: 0, length: .max, access: .all)
        XCTAssertTrue(mrB.implicit)
        XCTAssertEqual(mrB.childCount, 0)
        try env.qp.post(.write(local: mrA, localAddress: src, remote: mrB, remoteAddress: low, length: 2 * Int(pageSize))).wait()
        try env.qp.post(.write(local: mrA, localAddress: src + 2 * pageSize, remote: mrB, remoteAddress: high + 8, length: Int(pageSize))).wait()
        XCTAssertEqual(mrB.childCount, 2)
        XCTAssertEqual(mrB.mappedPages, 4) // two low pages, and two high ones (the WRITE straddles)
        XCTAssertEqual(env.nic.stats[.pageFaults], 3 + 4) // A's pages 0–2, B's two low pages and the two high ones the second WRITE straddles
        XCTAssertEqual(try env.cpuB.load(low + 8 * 600, as: UInt64.self), 9000 + 600)
        XCTAssertEqual(try env.cpuB.load(high + 8, as: UInt64.self), 9000 + 1024)
        XCTAssertEqual(try env.cpuB.load(high + pageSize, as: UInt64.self), 9000 + 1024 + 511)
        try env.b.madvise(low, length: pageSize, advice: .dontNeed)
        XCTAssertEqual(mrB.mappedPages, 3)
        XCTAssertEqual(env.nic.stats[.pagesInvalidated], 1)
        XCTAssertThrowsError(try env.qp.post(.write(local: mrA, localAddress: src, remote: mrB, remoteAddress: base + (2 << 30), length: 8)).wait()) {
            XCTAssertEqual($0 as? Errno, .EFAULT) // no VMA there
        }
        XCTAssertEqual(mrB.childCount, 3) // the child is made before the fault finds no VMA, as mlx5's
        XCTAssertEqual(env.b.mm.notifiers.intervalCount, 3) // one notifier a child
        // A fourth child's 2 MiB table would pass the NIC's limit (an eighth of 64 MiB).
        XCTAssertEqual(env.nic.tableBytesLimit, 8 << 20)
        XCTAssertThrowsError(try env.qp.post(.write(local: mrA, localAddress: src, remote: mrB, remoteAddress: base + (3 << 30), length: 8)).wait()) {
            XCTAssertEqual($0 as? Errno, .ENOMEM)
        }
        XCTAssertEqual(mrB.childCount, 3)
        XCTAssertThrowsError(try env.qp.post(.write(local: mrA, localAddress: src, remote: mrB, remoteAddress: taskSize - 4, length: 8)).wait()) {
            XCTAssertEqual($0 as? Errno, .EFAULT) // past the top of user space
        }
        // A READ from B's implicit region into A.
        try env.cpuB.store(high + 16, UInt64(31337))
        try env.qp.post(.read(local: mrA, localAddress: src, remote: mrB, remoteAddress: high + 16, length: 8)).wait()
        XCTAssertEqual(try env.cpuA.load(src, as: UInt64.self), 31337)
        mrB.deregister()
        XCTAssertEqual(mrB.childCount, 0)
        XCTAssertEqual(mrB.mappedPages, 0)
        XCTAssertEqual(env.b.mm.notifiers.intervalCount, 0)
        XCTAssertEqual(env.nic.tableBytes.load(), 4 * 8) // A's region's four pages
        XCTAssertThrowsError(try env.qp.post(.write(local: mrA, localAddress: src, remote: mrB, remoteAddress: low, length: 8)).wait()) {
            XCTAssertEqual($0 as? Errno, .EINVAL)
        }
        env.finish([mrA, mrB])
    }
}
