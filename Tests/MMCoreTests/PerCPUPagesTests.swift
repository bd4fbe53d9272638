import XCTest
@testable import MMCore
import MMSync
#if canImport(Glibc)
import Glibc
#endif

/// Per-CPU page lists (`PhysicalMemory+PerCPUPages.swift`).
final class PerCPUPagesTests: XCTestCase {
    /// The batch follows zone_batchsize: none under 64 MiB, 3 at 64 MiB, 31 from 512 MiB on.
    func testBatchSizeFollowsTheZoneSize() {
        XCTAssertEqual(PhysicalMemory.pcpBatch(systemFrames: 2048), 0)
        XCTAssertEqual(PhysicalMemory.pcpBatch(systemFrames: 16384), 3)
        XCTAssertEqual(PhysicalMemory.pcpBatch(systemFrames: 131072), 31)
        XCTAssertEqual(PhysicalMemory.pcpBatch(systemFrames: 262144), 63)
        XCTAssertEqual(PhysicalMemory.pcpBatch(systemFrames: 1 << 24), 63)
    }

    /// Frames parked on per-CPU lists still count as free, exhaustion is exact (the lists are
    /// drained before an allocation is refused), and a high-order block can be had again once
    /// every frame is back (the drain lets the buddy merge them).
    func testExhaustionIsExactAndFramesCoalesceAfterADrain() throws {
        let mem = try PhysicalMemory(systemBytes: 64 << 20, devicePfnSpaceBytes: 0)
        XCTAssertEqual(mem.pcpBatch, 3)
        let total = mem.freeFrames
        XCTAssertEqual(total, 16383)
        var pages: [Page] = []
        while let p = mem.allocate(order: 0) { pages.append(p) }
        XCTAssertEqual(pages.count, total)
        XCTAssertEqual(mem.freeFrames, 0)
        XCTAssertEqual(Set(pages.map(\.pfn)).count, total, "a frame was handed out twice")
        // Free half one by one (onto the lists), half in a batch.
        for p in pages[0..<(total / 2)] { mem.put(p) }
        mem.putBatch(Array(pages[(total / 2)...]))
        XCTAssertEqual(mem.freeFrames, total)
        XCTAssertEqual(mem.checkInvariants(), [])
        XCTAssertGreaterThan(mem.pcpFrames, 0)
        XCTAssertLessThanOrEqual(mem.pcpFrames, PhysicalMemory.pcpSlots * 4 * mem.pcpBatch)
        mem.drainAllPCP()
        XCTAssertEqual(mem.pcpFrames, 0)
        XCTAssertEqual(mem.freeFrames, total)
        XCTAssertEqual(mem.checkInvariants(), [])
        // Everything merged back: the largest blocks can be had (all of them, then none).
        var blocks: [Page] = []
        while let b = mem.allocate(order: 10) { blocks.append(b) }
        XCTAssertEqual(blocks.count, 15, "64 MiB is 16 blocks of 4 MiB, the first holding the zero page")
        let big = blocks.removeLast()
        for b in blocks { mem.put(b) }
        XCTAssertEqual(mem.freeFrames, total - 1024)
        mem.put(big)
        XCTAssertEqual(mem.freeFrames, total)
        XCTAssertEqual(mem.checkInvariants(), [])
    }

    /// Threads allocating and freeing at once on their CPUs' lists: no frame is handed out
    /// twice and every frame comes back.
    func testConcurrentAllocationsNeverShareAFrame() throws {
        let mem = try PhysicalMemory(systemBytes: 128 << 20, devicePfnSpaceBytes: 0)
        let total = mem.freeFrames
        let claimed = (0..<Int(mem.systemFrames)).map { _ in AtomicWord(0) }
        let threads = (0..<6).map { t in
            ModelThread.spawn(name: "alloc\(t)") {
                var held: [Page] = []
                for round in 0..<4000 {
                    if round % 3 != 2, let p = mem.allocate(order: 0) {
                        let was = claimed[Int(p.pfn)].add(1)
                        precondition(was == 1, "pfn \(p.pfn) handed out twice")
                        held.append(p)
                    } else if let p = held.popLast() {
                        claimed[Int(p.pfn)].add(UInt64.max) // -1
                        mem.put(p)
                    }
                }
                for p in held { claimed[Int(p.pfn)].add(UInt64.max); mem.put(p) }
            }
        }
        threads.forEach { $0.join() }
        XCTAssertEqual(mem.freeFrames, total)
        XCTAssertEqual(mem.checkInvariants(), [])
    }
}
