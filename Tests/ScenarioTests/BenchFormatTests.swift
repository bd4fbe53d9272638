import Foundation
import XCTest

/// The `hmm bench` JSON line format: parsed back, every field present and typed.
final class BenchFormatTests: XCTestCase {
    func testQuickJSONRowsParseWithEveryField() throws {
        let hmm = productsDirectory.appendingPathComponent("hmm")
        guard FileManager.default.isExecutableFile(atPath: hmm.path) else { throw XCTSkip("hmm not built next to the tests") }
        let p = Foundation.Process()
        p.executableURL = hmm
        p.arguments = ["bench", "--quick", "--format", "json", "--filter", "memory"]
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0)
        let lines = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self).split(separator: "\n")
        XCTAssertEqual(lines.count, 2)
        for line in lines {
            let o = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
            XCTAssertEqual(Set(o.keys), ["name", "unit", "value", "min", "max", "baseline", "ratio", "target", "test", "met"])
            XCTAssertTrue(o["value"] is NSNumber && o["target"] is NSNumber && o["ratio"] is NSNumber)
            XCTAssertNotNil(o["met"] as? Bool)
        }
        let first = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(lines[0].utf8)) as? [String: Any])
        XCTAssertEqual(first["name"] as? String, "page metadata per frame")
        XCTAssertEqual(first["value"] as? Double, 64)
        XCTAssertEqual(first["test"] as? String, "value <= target")
        XCTAssertEqual(first["met"] as? Bool, true)
    }

    /// Where SwiftPM puts the products: next to the test bundle.
    var productsDirectory: URL {
        #if os(macOS)
        if let b = Bundle.allBundles.first(where: { $0.bundlePath.hasSuffix(".xctest") }) { return b.bundleURL.deletingLastPathComponent() }
        #endif
        return URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    }
}
