import XCTest
@testable import MMCore

/// The page clears and copies of MMArch (`clear_page`, `folio_zero_user`, `copy_user_highpage`,
/// the bulk copies) on frames full of old bytes: every byte of the target is written, from the
/// right source frame and line, and none outside it, whichever line is the faulting one. Each
/// test runs with 32-byte streaming stores (where the CPU has AVX2) and with 16-byte ones.
final class PageCopyTests: XCTestCase {
    /// Bytes that differ with the frame, the offset and the seed (no period within a frame or
    /// between frames), so a copy from a wrong frame or line cannot match by chance.
    private func fill(_ mem: PhysicalMemory, _ pfn: UInt64, count: UInt64, seed: UInt64) {
        for f in pfn..<pfn + count {
            for k in 0..<4096 {
                let x = (f << 12 | UInt64(k)) &* 0x9E37_79B9_7F4A_7C15 ^ seed &* 0xD1B5_4A32_D192_ED03
                mem.frame(f).storeBytes(of: UInt8(truncatingIfNeeded: x >> 56) | 1, toByteOffset: k, as: UInt8.self)
            }
        }
    }
    private func bytes(_ mem: PhysicalMemory, _ pfn: UInt64, count: UInt64 = 1) -> [UInt8] {
        Array(UnsafeRawBufferPointer(start: mem.frame(pfn), count: Int(count << pageShift)))
    }
    /// Equal byte arrays; a failure names the first differing offset and how many differ
    /// (not the 4,096 bytes of each side).
    private func assertSame(_ a: [UInt8], _ b: [UInt8], _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        guard a != b else { return }
        let diff = zip(a, b).enumerated().filter { $0.element.0 != $0.element.1 }.map(\.offset)
        XCTFail("\(what): \(diff.count) bytes differ (\(a.count) vs \(b.count) long), first at \(diff.first ?? min(a.count, b.count))", file: file, line: line)
    }
    /// Runs `body` with 32-byte stores (if the CPU has them), then with 16-byte ones.
    private func inBothWidths(_ body: (String) throws -> Void) rethrows {
        defer { PhysicalMemory.setWideStores(true) }
        if PhysicalMemory.setWideStores(true) { try body("32-byte stores") }
        PhysicalMemory.setWideStores(false)
        try body("16-byte stores")
    }

    func testClearFramesZeroesExactlyTheRun() throws {
        let mem = try PhysicalMemory(systemBytes: 8 << 20, devicePfnSpaceBytes: 0)
        inBothWidths { width in
            fill(mem, 100, count: 9, seed: 1)
            let before = bytes(mem, 100, count: 9)
            mem.clearFrames(101, count: 7)
            let after = bytes(mem, 100, count: 9)
            assertSame(Array(after[0..<4096]), Array(before[0..<4096]), "the frame before the run is untouched (\(width))")
            assertSame(Array(after[8 * 4096..<9 * 4096]), Array(before[8 * 4096..<9 * 4096]), "the frame after it too (\(width))")
            XCTAssertEqual(after[4096..<8 * 4096].filter { $0 != 0 }.count, 0, "all 7 frames zero (\(width))")
            mem.clearFrames(100, count: 0)
            assertSame(Array(bytes(mem, 100)), Array(before[0..<4096]), "a run of 0 writes nothing (\(width))")
            mem.clearFrames(104, order: 2)
            XCTAssertEqual(bytes(mem, 104, count: 4).filter { $0 != 0 }.count, 0, width)
            assertSame(Array(bytes(mem, 108)), Array(before[8 * 4096..<9 * 4096]), width)
        }
    }

    func testUserPageClearAndCopyWriteEveryLineWhateverTheHotOffset() throws {
        let mem = try PhysicalMemory(systemBytes: 8 << 20, devicePfnSpaceBytes: 0)
        inBothWidths { width in
            for hot: UInt64 in [0, 8, 63, 64, 31 * 64 + 17, 2048, 4032, 4095] {
                fill(mem, 200, count: 3, seed: hot)
                let neighbours = (bytes(mem, 200), bytes(mem, 202))
                mem.clearUserPage(mem.page(201), address: 0x7f00_0000_0000 + hot)
                XCTAssertEqual(bytes(mem, 201).filter { $0 != 0 }.count, 0, "clear, hot byte \(hot) (\(width))")
                assertSame(bytes(mem, 200), neighbours.0, "frame before (\(width))"); assertSame(bytes(mem, 202), neighbours.1, "frame after (\(width))")

                fill(mem, 300, count: 1, seed: 1000 + hot)
                fill(mem, 201, count: 1, seed: 2000 + hot)
                mem.copyUserPage(to: mem.page(201), from: mem.page(300), address: 0x1000 + hot)
                assertSame(bytes(mem, 201), bytes(mem, 300), "copy, hot byte \(hot) (\(width))")
                assertSame(bytes(mem, 200), neighbours.0, "frame before (\(width))"); assertSame(bytes(mem, 202), neighbours.1, "frame after (\(width))")
            }
        }
    }

    func testBulkCopiesMoveEveryByteFromItsOwnSource() throws {
        let mem = try PhysicalMemory(systemBytes: 8 << 20, devicePfnSpaceBytes: 0)
        inBothWidths { width in
            fill(mem, 400, count: 4, seed: 3)
            fill(mem, 499, count: 6, seed: 4)
            let guards = (bytes(mem, 499), bytes(mem, 504))
            mem.copyFramesBulk(to: [503, 501, 500, 502], from: [400, 401, 402, 403])
            assertSame(bytes(mem, 503), bytes(mem, 400), width); assertSame(bytes(mem, 501), bytes(mem, 401), width)
            assertSame(bytes(mem, 500), bytes(mem, 402), width); assertSame(bytes(mem, 502), bytes(mem, 403), width)
            assertSame(bytes(mem, 499), guards.0, "nothing before the targets (\(width))")
            assertSame(bytes(mem, 504), guards.1, "nothing after them (\(width))")
            mem.copyPage(to: mem.page(600), from: mem.page(401))
            assertSame(bytes(mem, 600), bytes(mem, 401), width)
            // Gather into and scatter from a buffer: page-aligned, 16-byte aligned and 8-byte
            // aligned (an unaligned destination falls back to memcpy; the source may be anywhere).
            let raw = UnsafeMutableRawBufferPointer.allocate(byteCount: 4 * 4096, alignment: 4096)
            defer { raw.deallocate() }
            for shift in [0, 16, 8] {
                raw.initializeMemory(as: UInt8.self, repeating: 0xEE)
                let buf = UnsafeMutableRawBufferPointer(rebasing: raw[shift..<shift + 2 * 4096])
                mem.gatherFramesBulk(into: buf, from: [402, 400])
                assertSame(Array(buf[0..<4096]), bytes(mem, 402), "gather, offset \(shift) (\(width))")
                assertSame(Array(buf[4096..<8192]), bytes(mem, 400), "gather, offset \(shift) (\(width))")
                XCTAssertEqual(raw[0..<shift].filter { $0 != 0xEE }.count, 0, "nothing before the buffer")
                XCTAssertEqual(raw[shift + 2 * 4096..<4 * 4096].filter { $0 != 0xEE }.count, 0, "nothing after it")
                fill(mem, 700, count: 3, seed: 5 + UInt64(shift))
                let after = bytes(mem, 702)
                mem.scatterFramesBulk(to: [701, 700], from: UnsafeRawBufferPointer(buf))
                assertSame(bytes(mem, 701), bytes(mem, 402), "scatter, offset \(shift) (\(width))")
                assertSame(bytes(mem, 700), bytes(mem, 400), "scatter, offset \(shift) (\(width))")
                assertSame(bytes(mem, 702), after, "nothing past the targets")
            }
        }
    }
}
