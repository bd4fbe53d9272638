import XCTest
@testable import Scenario
import Conformance
import MMSync

final class CLIOutputTests: XCTestCase {
    var dir = ""
    override func setUp() {
        dir = "/tmp/hmm-cli-\(getpid())"
        mkdir(dir, 0o755)
        FileManagerLite.write("\(dir)/pass.hmm", "process p\nmmap 1page -> a\nprint hello\nload a expect 0\n")
        FileManagerLite.write("\(dir)/fail.hmm", "process p\nmmap 1page -> a\nload a u32 expect 3\n")
        FileManagerLite.write("\(dir)/bad.hmm", "process p\nfrob\nmmap 1page prot=q -> a\n")
        FileManagerLite.write("\(dir)/skip.hmm", "skip needs \"huge pages\"\n")
    }
    override func tearDown() {
        for f in ["pass", "fail", "bad", "skip"] { unlink("\(dir)/\(f).hmm") }
        rmdir(dir)
    }

    func testRunPrintsValidTAP14WithYAMLDiagnostics() throws {
        let r = HMMBinary.run(["run", "\(dir)/pass.hmm", "\(dir)/fail.hmm", "\(dir)/bad.hmm", "\(dir)/skip.hmm"])
        XCTAssertEqual(r.status, 2, r.output)
        let doc = try TAPDocument.parse(r.output)
        XCTAssertEqual(doc.plan, 4)
        XCTAssertEqual(doc.points.map(\.ok), [true, false, false, true])
        XCTAssertEqual(doc.points.map(\.description), ["pass", "fail", "bad", "skip"].map { "\(dir)/\($0).hmm" })
        XCTAssertEqual(doc.points[3].directive, "SKIP needs huge pages")
        XCTAssertEqual(doc.points[1].yaml, ["message": "expected 3, got 0", "severity": "fail", "at.file": "\(dir)/fail.hmm",
                                            "at.line": "3", "at.column": "1", "expected": "3", "got": "0"])
        XCTAssertEqual(doc.points[2].yaml["severity"], "malformed")
        XCTAssertEqual(doc.points[2].yaml["at.line"], "2")
        XCTAssertEqual(doc.points[2].yaml["message"], "expected a command, found unknown word 'frob'")
        XCTAssertTrue(r.output.contains("      line: 3\n      column: 17\n      message: \"expected a protection"), r.output)
        XCTAssertTrue(doc.comments.contains("# hello"))
        XCTAssertEqual(doc.comments.last, "# 1 passed, 2 failed, 1 skipped")
    }

    func testSelftestPrintsValidTAP14() throws {
        let r = HMMBinary.run(["selftest", "--filter", "anon_read_multiple"])
        XCTAssertEqual(r.status, 0, r.output)
        let doc = try TAPDocument.parse(r.output)
        XCTAssertEqual(doc.points.map(\.description), ["hmm.hmm_device_private.anon_read_multiple", "hmm.hmm_device_coherent.anon_read_multiple"])
        XCTAssertTrue(doc.points.allSatisfy(\.ok))
        XCTAssertEqual(doc.comments.last, "# 2 passed, 0 failed, 0 skipped")
        // An expected failure (Linux 7.2 fails it too) is `not ok … # TODO`, and exit status 0.
        let x = HMMBinary.run(["selftest", "--filter", "migrate_anon_huge_err"])
        XCTAssertEqual(x.status, 0, x.output)
        let xdoc = try TAPDocument.parse(x.output)
        XCTAssertEqual(xdoc.points.map(\.ok), [true, false])
        XCTAssertTrue(xdoc.points[1].directive?.hasPrefix("TODO expected failure: fails on Linux 7.2 too (hmm-tests.c:2664") == true,
                      xdoc.points[1].directive ?? "")
        XCTAssertEqual(xdoc.comments.last, "# 1 passed, 0 failed, 0 skipped, 1 failed as on Linux 7.2")
    }

    func testJSONIsOneDocument() throws {
        let r = HMMBinary.run(["run", "--format", "json", "--stats", "\(dir)/pass.hmm", "\(dir)/fail.hmm", "\(dir)/bad.hmm", "\(dir)/skip.hmm"])
        XCTAssertEqual(r.status, 2)
        let doc = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.output.utf8)) as? [String: Any], r.output)
        XCTAssertEqual(doc["format"] as? String, "hmm-run")
        XCTAssertEqual(doc["version"] as? Int, 1)
        let scripts = try XCTUnwrap(doc["scripts"] as? [[String: Any]])
        XCTAssertEqual(scripts.map { $0["result"] as? String }, ["pass", "fail", "malformed", "skip"])
        XCTAssertEqual(scripts.map { $0["exit_code"] as? Int }, [0, 1, 2, 0])
        XCTAssertEqual(scripts[0]["output"] as? [String], ["hello"])
        let stats = try XCTUnwrap(scripts[0]["stats"] as? [String: Int])
        XCTAssertGreaterThan(stats.values.reduce(0, +), 0, "\(stats)")
        let d = try XCTUnwrap((scripts[1]["diagnostics"] as? [[String: Any]])?.first)
        XCTAssertEqual(d["line"] as? Int, 3)
        XCTAssertEqual(d["expected"] as? String, "3")
        XCTAssertEqual(d["got"] as? String, "0")
        XCTAssertEqual((scripts[2]["diagnostics"] as? [[String: Any]])?.count, 2)
        XCTAssertEqual(scripts[3]["skip_reason"] as? String, "needs huge pages")
        let summary = try XCTUnwrap(doc["summary"] as? [String: Int])
        XCTAssertEqual(summary, ["passed": 1, "failed": 2, "skipped": 1, "exit_code": 2])

        let s = HMMBinary.run(["selftest", "--filter", "anon_read_multiple", "--format", "json"])
        XCTAssertEqual(s.status, 0)
        let sdoc = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(s.output.utf8)) as? [String: Any], s.output)
        XCTAssertEqual((sdoc["tests"] as? [[String: Any]])?.map { $0["result"] as? String }, ["pass", "pass"])
        XCTAssertEqual(sdoc["summary"] as? [String: Int], ["passed": 2, "failed": 0, "skipped": 0, "expectedFailures": 0])
        // A test that Linux 7.2 fails too is an expected failure in its variant, not a failure.
        let x = HMMBinary.run(["selftest", "--filter", "migrate_anon_huge_err", "--format", "json"])
        XCTAssertEqual(x.status, 0, x.output)
        let xdoc = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(x.output.utf8)) as? [String: Any], x.output)
        XCTAssertEqual((xdoc["tests"] as? [[String: Any]])?.map { $0["result"] as? String }, ["pass", "xfail"])
        XCTAssertEqual(xdoc["summary"] as? [String: Int], ["passed": 1, "failed": 0, "skipped": 0, "expectedFailures": 1])
    }

    func testCheckAndInspectCommands() {
        let c = HMMBinary.run(["check", "\(dir)/pass.hmm", "\(dir)/bad.hmm"])
        XCTAssertEqual(c.status, 2)
        XCTAssertEqual(c.output, """
            \(dir)/pass.hmm: ok
            \(dir)/bad.hmm:2:1: expected a command, found unknown word 'frob'
            \(dir)/bad.hmm:3:17: expected a protection (none, r, w, rw, rx, rwx or a number), found 'q'
            2 checked, 1 with errors

            """)
        let i = HMMBinary.run(["inspect", "\(dir)/pass.hmm"])
        XCTAssertEqual(i.status, 0, i.output)
        XCTAssertTrue(i.output.contains("process p (pid 1): 1 VMA\n  0x7efffffff000-0x7f0000000000 rw-p anon 1 pages\n    0x7efffffff000: present pfn 0 ro"), i.output)
        XCTAssertTrue(i.output.contains(" (zero page)\n"), i.output)
        XCTAssertTrue(i.output.hasSuffix("\(dir)/pass.hmm: passed\n"), i.output)
    }
}
