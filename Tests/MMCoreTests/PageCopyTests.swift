import XCTest
@testable import MMCore

/// The page clears and copies of MMArch (`clear_page`, `folio_zero_user`, `copy_user_highpage`,
/// the bulk copies) on frames full of old bytes: every byte of the target is written, none
/// outside it, whichever line is the faulting one (32-byte streaming stores where the CPU has
/// AVX2, 16-byte ones otherwise).
final class PageCopyTests: XCTestCase {
    private func fill(_ mem: PhysicalMemory, _ pfn: UInt64, count: UInt64, seed: UInt8) {
        for k in 0..<Int(count << pageShift) { mem.frame(pfn).storeBytes(of: seed &+ UInt8(truncatingIfNeeded: k * 7), toByteOffset: k, as: UInt8.self) }
    }
    private func bytes(_ mem: PhysicalMemory, _ pfn: UInt64, count: UInt64 = 1) -> [UInt8] {
        Array(UnsafeRawBufferPointer(start: mem.frame(pfn), count: Int(count << pageShift)))
    }

    func testClearFramesZeroesExactlyTheRun() throws {
        let mem = try PhysicalMemory(systemBytes: 8 << 20, devicePfnSpaceBytes: 0)
        fill(mem, 100, count: 9, seed: 0x5a)
        let before = bytes(mem, 100, count: 9)
        mem.clearFrames(101, count: 7)
        let after = bytes(mem, 100, count: 9)
        XCTAssertEqual(Array(after[0..<4096]), Array(before[0..<4096]), "the frame before the run is untouched")
        XCTAssertEqual(Array(after[8 * 4096..<9 * 4096]), Array(before[8 * 4096..<9 * 4096]), "the frame after it too")
        XCTAssertEqual(after[4096..<8 * 4096].filter { $0 != 0 }.count, 0, "all 7 frames zero")
        mem.clearFrames(100, count: 0)
        XCTAssertEqual(Array(bytes(mem, 100)), Array(before[0..<4096]), "a run of 0 writes nothing")
        mem.clearFrames(104, order: 2)
        XCTAssertEqual(bytes(mem, 104, count: 4).filter { $0 != 0 }.count, 0)
        XCTAssertEqual(Array(bytes(mem, 108)), Array(before[8 * 4096..<9 * 4096]))
    }

    func testUserPageClearAndCopyWriteEveryLineWhateverTheHotOffset() throws {
        let mem = try PhysicalMemory(systemBytes: 8 << 20, devicePfnSpaceBytes: 0)
        for hot: UInt64 in [0, 8, 63, 64, 31 * 64 + 17, 2048, 4032, 4095] {
            fill(mem, 200, count: 3, seed: UInt8(truncatingIfNeeded: hot))
            let neighbours = (bytes(mem, 200), bytes(mem, 202))
            mem.clearUserPage(mem.page(201), address: 0x7f00_0000_0000 + hot)
            XCTAssertEqual(bytes(mem, 201).filter { $0 != 0 }.count, 0, "clear, hot byte \(hot)")
            XCTAssertEqual(bytes(mem, 200), neighbours.0); XCTAssertEqual(bytes(mem, 202), neighbours.1)

            fill(mem, 300, count: 1, seed: 0xc3 &+ UInt8(truncatingIfNeeded: hot))
            fill(mem, 201, count: 1, seed: 0x11)
            mem.copyUserPage(to: mem.page(201), from: mem.page(300), address: 0x1000 + hot)
            XCTAssertEqual(bytes(mem, 201), bytes(mem, 300), "copy, hot byte \(hot)")
            XCTAssertEqual(bytes(mem, 200), neighbours.0); XCTAssertEqual(bytes(mem, 202), neighbours.1)
        }
    }

    func testBulkCopiesMoveEveryByte() throws {
        let mem = try PhysicalMemory(systemBytes: 8 << 20, devicePfnSpaceBytes: 0)
        fill(mem, 400, count: 4, seed: 0x21)
        fill(mem, 500, count: 4, seed: 0x99)
        mem.copyFramesBulk(to: [503, 501, 500, 502], from: [400, 401, 402, 403])
        XCTAssertEqual(bytes(mem, 503), bytes(mem, 400)); XCTAssertEqual(bytes(mem, 501), bytes(mem, 401))
        XCTAssertEqual(bytes(mem, 500), bytes(mem, 402)); XCTAssertEqual(bytes(mem, 502), bytes(mem, 403))
        mem.copyPage(to: mem.page(600), from: mem.page(401))
        XCTAssertEqual(bytes(mem, 600), bytes(mem, 401))
        // Gather into and scatter from a buffer: a page-aligned one, and one only 16-byte aligned
        // (32-byte streaming stores need an aligned destination; the source may be anywhere).
        let raw = UnsafeMutableRawBufferPointer.allocate(byteCount: 3 * 4096 + 16, alignment: 4096)
        defer { raw.deallocate() }
        for shift in [0, 16] {
            let buf = UnsafeMutableRawBufferPointer(rebasing: raw[shift..<shift + 2 * 4096])
            mem.gatherFramesBulk(into: buf, from: [402, 400])
            XCTAssertEqual(Array(buf[0..<4096]), bytes(mem, 402), "gather, offset \(shift)")
            XCTAssertEqual(Array(buf[4096..<8192]), bytes(mem, 400))
            fill(mem, 700, count: 2, seed: 0x44)
            mem.scatterFramesBulk(to: [701, 700], from: UnsafeRawBufferPointer(buf))
            XCTAssertEqual(bytes(mem, 701), bytes(mem, 402), "scatter, offset \(shift)")
            XCTAssertEqual(bytes(mem, 700), bytes(mem, 400))
        }
    }
}
