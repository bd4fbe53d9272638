import Foundation
import XCTest
@testable import Devices
@testable import Report

/// The SVM report and trace (issue 16): the trace's events add up to the device's counters,
/// the JSON parses with a track per engine, and the page loads in a real browser without a
/// console error.
final class SVMReportTests: XCTestCase {
    func runs() throws -> [SVMRunResult] {
        try ["first-touch", "density-prefetch"].map { p in
            try SVMRunner.run(.stream, policy: SVMRunner.policy(named: p)!, pages: 256, engines: 4, machineMiB: 64, deviceMiB: 16,
                              trace: SVMTrace())
        }
    }

    func testTheTraceHasATrackPerEngineAndAddsUpToTheCounters() throws {
        let rs = try runs()
        let text = TraceEvents.json(rs.map { ("\($0.workload.rawValue) under \($0.policy)", $0.trace!) }, engines: 4)
        let doc = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
        let events = try XCTUnwrap(doc["traceEvents"] as? [[String: Any]])
        for (k, r) in rs.enumerated() {
            let pid = k + 1
            let mine = events.filter { $0["pid"] as? Int == pid }
            let threads = Set(mine.filter { $0["name"] as? String == "thread_name" }.compactMap { ($0["args"] as? [String: Any])?["name"] as? String })
            XCTAssertEqual(threads, ["engine 0", "engine 1", "engine 2", "engine 3", "fault thread", "migrations", "CPU faults back"])
            let process = mine.first { $0["name"] as? String == "process_name" }
            XCTAssertEqual((process?["args"] as? [String: Any])?["name"] as? String, "stream under \(r.policy)")
            XCTAssertEqual(mine.filter { $0["name"] as? String == "batch" }.count, r.counter("batches"), r.policy)
            XCTAssertEqual(mine.filter { ($0["name"] as? String)?.hasSuffix(" fault") == true }.count, r.counter("faults"), r.policy)
            let toDevice = mine.filter { $0["name"] as? String == "to device" }
                .reduce(0) { $0 + (($1["args"] as? [String: Any])?["pages"] as? Int ?? 0) }
            XCTAssertEqual(toDevice, r.counter("migrated_to_device"), r.policy)
            XCTAssertEqual(mine.filter { ($0["name"] as? String)?.hasPrefix("kernel ") == true }.count, 4)
            for e in mine where e["ph"] as? String == "X" { XCTAssertGreaterThanOrEqual(e["dur"] as? Double ?? -1, 0) }
        }
    }

    func testTheReportLoadsInABrowserWithoutConsoleErrors() throws {
        let rs = try runs()
        let html = SVMReport.html(rs, title: "test report", parameters: "256 pages")
        XCTAssertEqual(html.components(separatedBy: "<svg").count - 1, 1 + 2 * rs.count) // the bars, then two plots per run
        for r in rs { XCTAssertTrue(html.contains("<td>\(r.counter("faults"))</td>")) }
        let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].first { FileManager.default.isExecutableFile(atPath: $0) }
        guard let chromium else { throw XCTSkip("Chromium is not installed (.ci/run installs it)") }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("hmm-report-test-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let page = dir.appendingPathComponent("index.html"), shot = dir.appendingPathComponent("shot.png")
        try html.write(to: page, atomically: true, encoding: .utf8)
        let p = Process()
        // Under `timeout`: a browser that hangs fails the test instead of the run.
        p.executableURL = URL(fileURLWithPath: "/usr/bin/timeout")
        p.arguments = ["-k", "10", "120", chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                       "--hide-scrollbars", "--window-size=1200,2000",
                       "--enable-logging=stderr", "--v=0", "--user-data-dir=\(dir.path)/profile", "--screenshot=\(shot.path)", page.absoluteString]
        let err = Pipe()
        p.standardError = err
        p.standardOutput = Pipe()
        try p.run()
        let log = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0, log)
        let consoleErrors = log.split(separator: "\n").filter { $0.contains("CONSOLE") || $0.contains("Uncaught") }
        XCTAssertEqual(consoleErrors, [], "console errors")
        let png = try Data(contentsOf: shot)
        XCTAssertGreaterThan(png.count, 10_000)
        XCTAssertEqual(Array(png.prefix(8)), [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A])
    }
}
