import XCTest
@testable import MMCore

final class ShmemFileTests: XCTestCase {
    func testFileReadWriteThroughMappings() throws {
        let env = try Env()
        let f = ShmemFile(machine: env.machine, size: 4 * 4096)
        let idx = (0..<(4 * 1024)).flatMap { withUnsafeBytes(of: Int32($0).littleEndian, Array.init) }
        XCTAssertEqual(try f.pwrite(offset: 0, bytes: idx), 4 * 4096)
        let ro = try env.process.mmap(length: 4 * 4096, prot: .read, flags: .shared, file: f)
        try checkIDX(env.cpu, ro, bytes: 4 * 4096)
        let rw = try env.process.mmap(length: 4 * 4096, prot: .readWrite, flags: .shared, file: f)
        try env.cpu.store(rw + 4, Int32(-5))
        XCTAssertEqual(try env.cpu.load(ro + 4, as: Int32.self), -5)
        XCTAssertEqual(try f.pread(offset: 4, count: 4), withUnsafeBytes(of: Int32(-5).littleEndian, Array.init))
        let priv = try env.process.mmap(length: 4 * 4096, prot: .readWrite, flags: .private, file: f)
        try env.cpu.store(priv + 8, Int32(99))
        XCTAssertEqual(try env.cpu.load(ro + 8, as: Int32.self), 2) // private COW does not reach the file
        XCTAssertEqual(try env.cpu.load(priv + 4, as: Int32.self), -5)
        XCTAssertEqual(try f.pread(offset: 4 * 4096 - 2, count: 10).count, 2) // short read at EOF
        env.check()
        try f.ftruncate(4096)
        XCTAssertFault(.bus(address: rw + 4096)) { () throws(AccessFault) in try env.cpu.load(rw + 4096, as: UInt8.self) }
        XCTAssertEqual(try env.cpu.load(rw + 4, as: Int32.self), -5)
        XCTAssertEqual(f.cachedPages, 1)
        env.check()
        env.teardown(stillHeld: 1) // the file's one cached page lives as long as the file
        XCTAssertEqual(f.size, 4096)
    }
}
