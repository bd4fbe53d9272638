import XCTest
@testable import MMCore
import MMSync
#if canImport(Glibc)
import Glibc
#endif

/// Batched allocation and freeing, bulk copies, and populated RAM.
final class PhysicalMemoryBatchTests: XCTestCase {
    func testAllocateBatchAndPutBatchBalance() throws {
        let mem = try PhysicalMemory(systemBytes: 8 << 20, devicePfnSpaceBytes: 0)
        let pages = mem.allocateBatch(300)
        XCTAssertEqual(pages.count, 300)
        XCTAssertEqual(Set(pages.map(\.pfn)).count, 300)
        XCTAssertFalse(pages.contains { $0.pfn == 0 })
        XCTAssertTrue(pages.allSatisfy { $0.refcount == 1 && $0.order == 0 && !$0.test(.buddy) })
        XCTAssertEqual(mem.freeFrames, 2047 - 300)
        // A second reference on the first ten: putBatch frees only the other 290.
        for p in pages.prefix(10) { mem.get(p) }
        mem.putBatch(pages)
        XCTAssertEqual(mem.freeFrames, 2047 - 10)
        XCTAssertTrue(pages.prefix(10).allSatisfy { $0.refcount == 1 })
        mem.putBatch(Array(pages.prefix(10)))
        XCTAssertEqual(mem.freeFrames, 2047)
        // Everything merged back: the whole of RAM but the zero page's block is one order-10 run again.
        XCTAssertNotNil(mem.allocate(order: 10))
    }

    func testAllocateBatchStopsAtExhaustionAndInjectedFailure() throws {
        let mem = try PhysicalMemory(systemBytes: 8 << 20, devicePfnSpaceBytes: 0)
        let all = mem.allocateBatch(5000)
        XCTAssertEqual(all.count, 2047)
        XCTAssertEqual(mem.freeFrames, 0)
        XCTAssertEqual(mem.allocateBatch(1).count, 0)
        mem.putBatch(all)
        XCTAssertEqual(mem.freeFrames, 2047)
        FaultInjection.arm(.frameAllocation, count: 1)
        defer { FaultInjection.disarmAll() }
        let three = mem.allocateBatch(4)
        XCTAssertEqual(three.count, 3, "the failed slot is skipped, the other three are allocated")
        let four = mem.allocateBatch(4)
        XCTAssertEqual(four.count, 4)
        mem.putBatch(three + four)
        XCTAssertEqual(mem.freeFrames, 2047)
    }

    func testBulkCopiesMoveExactBytesAndTheZeroPageZeroFills() throws {
        let mem = try PhysicalMemory(systemBytes: 8 << 20, devicePfnSpaceBytes: 0)
        let src = mem.allocateBatch(3), dst = mem.allocateBatch(3)
        for (k, p) in src.enumerated() {
            for w in 0..<512 { mem.frame(p.pfn).storeBytes(of: UInt64(k << 16 | w), toByteOffset: w * 8, as: UInt64.self) }
        }
        for p in dst { memset(mem.frame(p.pfn), 0xAB, Int(pageSize)) }
        mem.copyFramesBulk(to: dst.map(\.pfn), from: [src[0].pfn, PhysicalMemory.zeroPfn, src[2].pfn])
        XCTAssertEqual(mem.frame(dst[0].pfn).load(fromByteOffset: 8 * 511, as: UInt64.self), 511)
        XCTAssertEqual(mem.frame(dst[2].pfn).load(fromByteOffset: 8 * 7, as: UInt64.self), 2 << 16 | 7)
        XCTAssertTrue((0..<512).allSatisfy { mem.frame(dst[1].pfn).load(fromByteOffset: $0 * 8, as: UInt64.self) == 0 })

        let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: 3 * Int(pageSize), alignment: 4096)
        defer { buf.deallocate() }
        mem.gatherFramesBulk(into: buf, from: src.map(\.pfn).reversed())
        XCTAssertEqual(buf.load(fromByteOffset: 8 * 3, as: UInt64.self), 2 << 16 | 3)
        XCTAssertEqual(buf.load(fromByteOffset: 2 * Int(pageSize) + 8 * 9, as: UInt64.self), 9)
        mem.scatterFramesBulk(to: [dst[1].pfn], from: UnsafeRawBufferPointer(rebasing: buf[Int(pageSize)...]))
        XCTAssertEqual(mem.frame(dst[1].pfn).load(fromByteOffset: 8 * 100, as: UInt64.self), 1 << 16 | 100)
        XCTAssertEqual(mem.frame(0).load(fromByteOffset: 0, as: UInt64.self), 0, "the zero page stays zero")
        mem.putBatch(src + dst)
    }

    /// Host pages of the frame arena that are resident (`mincore`).
    func residentFrames(_ mem: PhysicalMemory) -> Int {
        let n = Int(mem.systemFrames)
        var vec = [UInt8](repeating: 0, count: n)
        XCTAssertEqual(mincore(mem.frameBase, n << 12, &vec), 0)
        return vec.filter { $0 & 1 != 0 }.count
    }

    func testPopulatedRAMIsResidentUpFrontAndBehavesAsLazyRAM() throws {
        let lazy = try PhysicalMemory(systemBytes: 16 << 20, devicePfnSpaceBytes: 0)
        XCTAssertLessThan(residentFrames(lazy), 64, "lazy RAM is committed on first touch")
        let mem = try PhysicalMemory(systemBytes: 16 << 20, devicePfnSpaceBytes: 0, populateRAM: true)
        XCTAssertEqual(residentFrames(mem), 4096, "every frame committed before use")
        XCTAssertEqual(mem.freeFrames, 4095)
        let p = try XCTUnwrap(mem.allocate(order: 0, zeroed: true))
        XCTAssertEqual(mem.frame(p.pfn).load(fromByteOffset: 64, as: UInt64.self), 0)
        mem.put(p)
        XCTAssertEqual(mem.freeFrames, 4095)
    }

    func testCopyEngineJobsCompleteWithExactBytes() throws {
        let mem = try PhysicalMemory(systemBytes: 16 << 20, devicePfnSpaceBytes: 0)
        let engine = CopyEngine(name: "test-copy")
        XCTAssertFalse(engine.isRunning) // no thread until the first job
        let src = mem.allocateBatch(300), dst = mem.allocateBatch(300)
        for (k, p) in src.enumerated() { mem.frame(p.pfn).storeBytes(of: UInt64(k + 1), toByteOffset: 4000, as: UInt64.self) }
        // Two jobs in flight, waited in order; then a parallel gather (half on the engine).
        let f1 = mem.copyFramesAsync(on: engine, to: dst.prefix(150).map(\.pfn), from: src.prefix(150).map(\.pfn))
        let f2 = mem.copyFramesAsync(on: engine, to: dst.suffix(150).map(\.pfn), from: src.suffix(150).map(\.pfn))
        f1.wait(); f2.wait()
        XCTAssertTrue(f1.isDone && f2.isDone)
        XCTAssertTrue(engine.isRunning)
        XCTAssertEqual(dst.indices.filter { mem.frame(dst[$0].pfn).load(fromByteOffset: 4000, as: UInt64.self) != UInt64($0 + 1) }, [])
        let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: 300 * Int(pageSize), alignment: 4096)
        defer { buf.deallocate() }
        mem.gatherFramesParallel(on: engine, into: buf, from: dst.map(\.pfn))
        XCTAssertEqual((0..<300).filter { buf.load(fromByteOffset: $0 * Int(pageSize) + 4000, as: UInt64.self) != UInt64($0 + 1) }, [])
        XCTAssertTrue(mem.copyFramesAsync(on: engine, to: [], from: []).isDone)
        // Teardown joins the thread; a job submitted after it runs on the caller.
        engine.stop()
        XCTAssertFalse(engine.isRunning)
        let late = mem.copyFramesAsync(on: engine, to: [dst[0].pfn], from: [src[1].pfn])
        XCTAssertTrue(late.isDone)
        XCTAssertEqual(mem.frame(dst[0].pfn).load(fromByteOffset: 4000, as: UInt64.self), 2)
        mem.putBatch(src + dst)
        XCTAssertEqual(mem.freeFrames, 4095)
    }
}
