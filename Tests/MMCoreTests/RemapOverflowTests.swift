import XCTest
@testable import MMCore

final class RemapOverflowTests: XCTestCase {
    func testGrowingToAnImpossibleLengthIsENOMEM() throws {
        let env = try Env()
        let a = try env.anon(1)
        XCTAssertErrno(.ENOMEM) { () throws(Errno) in try env.process.mremap(a, oldLength: 4096, newLength: 0xFFFF_FFFF_FFFF_F000, flags: []) }
        XCTAssertErrno(.ENOMEM) { () throws(Errno) in try env.process.mremap(a, oldLength: 4096, newLength: taskSize + 4096, flags: .mayMove) }
        XCTAssertEqual(env.mm.vmaCount, 1)
        env.teardown()
    }
}
