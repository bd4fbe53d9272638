import XCTest

/// Every "Locking:" contract in Sources executes: the function it documents asserts it on entry
/// (`assertHeld`, `assertLocked`, `assertWriteLocked`, `assertNotHeld`, lockdep's
/// `assertNoSpinLockHeld`/`assertSpinLockHeld`/`assertSomeRWSemHeld`/`assertNoLocksHeld`, a
/// page-lock `assert`, or a `precondition`), or says on its first lines why it cannot
/// ("Contract not checkable"). Protocol requirements (no body) are checked where implemented.
final class LockingContractsTests: XCTestCase {
    func testEveryLockingCommentHasItsAssertion() throws {
        var missing: [String] = []
        var checked = 0
        let root = "\(packageRoot)/Sources"
        let files = FileManager.default.enumerator(atPath: root)!.compactMap { $0 as? String }.filter { $0.hasSuffix(".swift") }.sorted()
        for f in files {
            let lines = try String(contentsOfFile: "\(root)/\(f)", encoding: .utf8).components(separatedBy: "\n")
            var i = 0
            while i < lines.count {
                let t = lines[i].trimmingCharacters(in: .whitespaces)
                guard t.hasPrefix("///") else { i += 1; continue }
                // One doc comment block.
                var j = i
                var text = ""
                while j < lines.count, lines[j].trimmingCharacters(in: .whitespaces).hasPrefix("///") { text += lines[j] + " "; j += 1 }
                while j < lines.count, lines[j].trimmingCharacters(in: .whitespaces).hasPrefix("@") { j += 1 }
                defer { i = max(j, i + 1) }
                guard text.contains("Locking:"), j < lines.count else { continue }
                let decl = lines[j]
                guard decl.range(of: #"\b(func|init)\b"#, options: .regularExpression) != nil else { continue }
                // The body's opening brace, on the declaration or its continuation lines.
                var k = j
                while k < lines.count, k - j < 6, !lines[k].contains("{") {
                    let next = k + 1 < lines.count ? lines[k + 1].trimmingCharacters(in: .whitespaces) : ""
                    if next.hasPrefix("///") || next.hasPrefix("func ") || next.hasPrefix("var ") || next.isEmpty { k = lines.count; break }
                    k += 1
                }
                guard k < lines.count, lines[k].contains("{") else { continue }   // a protocol requirement
                checked += 1
                let body = lines[k..<min(lines.count, k + 14)].joined(separator: "\n")
                if !(body.contains("assert") || body.contains("precondition(") || body.contains("Contract not checkable")) {
                    missing.append("Sources/\(f):\(j + 1): \(decl.trimmingCharacters(in: .whitespaces).prefix(90))")
                }
            }
        }
        XCTAssertGreaterThan(checked, 60)
        XCTAssertEqual(missing, [], "\(missing.count) of \(checked) Locking: contracts have no assertion:\n" + missing.joined(separator: "\n"))
    }
}
