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

    /// `--save` then `--compare`: the saved file is a header (commit, date, machine) and the
    /// rows, each a JSON object; a second run compared with it prints each figure's value and
    /// ratio before and after; a missing file is refused before anything is measured.
    func testSaveAndCompareRoundTrip() throws {
        let hmm = productsDirectory.appendingPathComponent("hmm")
        guard FileManager.default.isExecutableFile(atPath: hmm.path) else { throw XCTSkip("hmm not built next to the tests") }
        let path = NSTemporaryDirectory() + "bench-\(getpid()).json"
        defer { try? FileManager.default.removeItem(atPath: path) }
        func run(_ args: [String]) throws -> (Int32, String, String) {
            let p = Foundation.Process()
            p.executableURL = hmm
            p.arguments = args
            let out = Pipe(), err = Pipe()
            p.standardOutput = out
            p.standardError = err
            try p.run()
            let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            let errText = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            p.waitUntilExit()
            return (p.terminationStatus, text, errText)
        }
        let (rc1, _, _) = try run(["bench", "--quick", "--filter", "memory", "--save", path])
        XCTAssertEqual(rc1, 0)
        let lines = try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(lines.count, 3)
        let header = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(lines[0].utf8)) as? [String: Any])
        XCTAssertEqual(Set(header.keys), ["commit", "date", "cores", "memoryBytes", "cpu", "quick", "reps"])
        XCTAssertEqual(header["quick"] as? Bool, true)
        XCTAssertGreaterThan(header["cores"] as? Int ?? 0, 0)
        let row = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(lines[1].utf8)) as? [String: Any])
        XCTAssertEqual(row["name"] as? String, "page metadata per frame")

        let (rc2, json, text) = try run(["bench", "--quick", "--filter", "memory", "--format", "json", "--compare", path])
        XCTAssertEqual(rc2, 0)
        // stdout stays JSON Lines; the comparison is on stderr.
        for line in json.split(separator: "\n") { XCTAssertNotNil(try? JSONSerialization.jsonObject(with: Data(line.utf8)), String(line)) }
        XCTAssertTrue(text.contains("# page metadata per frame: 64 → 64 B (+0%), ratio 1 → 1"), text)
        XCTAssertTrue(text.contains("# compared with: {\"commit\""), text)

        let (rc3, _, err) = try run(["bench", "--quick", "--compare", path + ".missing"])
        XCTAssertNotEqual(rc3, 0)
        XCTAssertTrue(err.contains("--compare: cannot read"), err)
        let (rc4, _, err4) = try run(["bench", "--quick", "--save", "/nonexistent-dir/run.json"])
        XCTAssertNotEqual(rc4, 0)
        XCTAssertTrue(err4.contains("--save: cannot write"), err4)
    }

    /// Where SwiftPM puts the products: next to the test bundle.
    var productsDirectory: URL {
        #if os(macOS)
        if let b = Bundle.allBundles.first(where: { $0.bundlePath.hasSuffix(".xctest") }) { return b.bundleURL.deletingLastPathComponent() }
        #endif
        return URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    }
}
