import XCTest
@testable import MMCore

final class PhysicalMemoryTests: XCTestCase {
    private final class NoOps: DevicePagemapOps {
        func pageFree(_ page: Page) {}
        func migrateToRAM(_ fault: DevicePrivateFault) -> FaultResult { .sigbus }
    }

    /// The device pfn space asked for is all usable, whatever the RAM size: 256 MiB of it
    /// holds exactly one 256 MiB registration above 64 MiB of RAM (device pfns start at the
    /// next chunk boundary), and no second one.
    func testDevicePfnSpaceHoldsWhatWasAskedFor() throws {
        let mem = try PhysicalMemory(systemBytes: 64 << 20, devicePfnSpaceBytes: 256 << 20)
        let ops = NoOps()
        let g = try mem.registerDeviceMemory(kind: .devicePrivate, pageCount: PhysicalMemory.deviceChunkPages, owner: ops, ops: ops)
        XCTAssertEqual(g.startPfn, PhysicalMemory.deviceChunkPages)
        XCTAssertEqual(mem.totalPfns, 2 * PhysicalMemory.deviceChunkPages)
        XCTAssertThrowsError(try mem.registerDeviceMemory(kind: .devicePrivate, pageCount: PhysicalMemory.deviceChunkPages, owner: ops, ops: ops)) {
            XCTAssertEqual($0 as? Errno, .ENOMEM)
        }
        try mem.unregisterDeviceMemory(g)
    }

    func testMetadataIs64BytesPerFrame() throws {
        XCTAssertEqual(Page.metadataStride, 64)
        let mem = try PhysicalMemory(systemBytes: 8 << 20, devicePfnSpaceBytes: 0)
        let a = mem.page(10), b = mem.page(11)
        XCTAssertEqual(UnsafeRawPointer(b.meta) - UnsafeRawPointer(a.meta), 64)
        // The last field (lru prev, 4 bytes at offset 60) ends exactly at the stride.
        a.lruPrev = 0xDEAD_BEEF
        XCTAssertEqual(b.flagsWord.load(), 0)
        XCTAssertEqual(a.meta.load(fromByteOffset: 60, as: UInt32.self), 0xDEAD_BEEF)
        a.lruPrev = 0
    }

    func testAllocationAccountingIsExact() throws {
        let mem = try PhysicalMemory(systemBytes: 8 << 20, devicePfnSpaceBytes: 0)
        XCTAssertEqual(mem.systemFrames, 2048)
        XCTAssertEqual(mem.freeFrames, 2047) // pfn 0 is the zero page
        XCTAssertTrue(mem.zeroPage.test(.reserved))
        let huge = try XCTUnwrap(mem.allocate(order: 9))
        XCTAssertEqual(huge.pfn % 512, 0)
        XCTAssertEqual(mem.freeFrames, 2047 - 512)
        XCTAssertTrue(mem.page(huge.pfn + 1).test(.tail))
        let small = try XCTUnwrap(mem.allocate(order: 0, zeroed: true))
        XCTAssertEqual(mem.frame(small.pfn).load(fromByteOffset: 4088, as: UInt64.self), 0)
        XCTAssertEqual(small.refcount, 1)
        XCTAssertEqual(mem.freeFrames, 2047 - 513)
        mem.put(huge); mem.put(small)
        XCTAssertEqual(mem.freeFrames, 2047)
        XCTAssertEqual(mem.checkInvariants(), [])
    }

    func testExhaustionReturnsNilAndRecovers() throws {
        let mem = try PhysicalMemory(systemBytes: 8 << 20, devicePfnSpaceBytes: 0)
        var pages: [Page] = []
        while let p = mem.allocate(order: 0) { pages.append(p) }
        XCTAssertEqual(pages.count, 2047)
        XCTAssertEqual(mem.freeFrames, 0)
        XCTAssertNil(mem.allocate(order: 9))
        for p in pages { mem.put(p) }
        XCTAssertEqual(mem.freeFrames, 2047)
        XCTAssertEqual(mem.checkInvariants(), [])
        // Buddies merged back: three of the four 2 MiB blocks are whole again (block 0 holds pfn 0).
        var hugeBlocks: [Page] = []
        while let h = mem.allocate(order: 9) { hugeBlocks.append(h) }
        XCTAssertEqual(hugeBlocks.count, 3)
        hugeBlocks.forEach { mem.put($0) }
    }

    func testBadSizesAreRejected() {
        XCTAssertErrno(.EINVAL) { () throws(Errno) in try PhysicalMemory(systemBytes: 4096) }
        XCTAssertErrno(.EINVAL) { () throws(Errno) in try PhysicalMemory(systemBytes: (8 << 20) + 1) }
    }

    func testInjectedAllocationFailure() throws {
        let mem = try PhysicalMemory(systemBytes: 8 << 20, devicePfnSpaceBytes: 0)
        FaultInjection.arm(.frameAllocation)
        XCTAssertNil(mem.allocate(order: 0))
        XCTAssertNotNil(mem.allocate(order: 0).map { mem.put($0); return $0 })
        FaultInjection.disarmAll()
    }
}

import MMSync
