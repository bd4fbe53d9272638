import XCTest
@testable import Scenario
import Conformance
import MMSync

/// Runs the `hmm` binary built beside this test bundle.
enum HMMBinary {
    static var path: String {
        var buf = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buf, buf.count - 1)
        let exe = n > 0 ? String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) : ""
        return String(exe[..<(exe.lastIndex(of: "/") ?? exe.startIndex)]) + "/hmm"
    }

    struct Result {
        let status: Int32        // exit status, or −signal when killed by a signal
        let output: String
        let seconds: Double
        let timedOut: Bool
    }

    /// Runs `hmm ARGS…` with stdout (and stderr) captured, killed after `timeout` seconds.
    static func run(_ args: [String], timeout: Double = 120) -> Result {
        let outPath = "/tmp/hmm-cli-\(getpid())-\(UInt64.random(in: 0..<UInt64.max)).out"
        defer { unlink(outPath) }
        let p = Foundation.Process()
        p.executableURL = URL(fileURLWithPath: path)
        p.arguments = args
        _ = FileManager.default.createFile(atPath: outPath, contents: nil)
        let fh = FileHandle(forWritingAtPath: outPath)!
        p.standardOutput = fh
        p.standardError = fh
        let t0 = DispatchTimeLite.now()
        do { try p.run() } catch { return Result(status: -1000, output: "cannot start \(path): \(error)", seconds: 0, timedOut: false) }
        var timedOut = false
        while p.isRunning {
            if Double(DispatchTimeLite.now() - t0) / 1e9 > timeout { timedOut = true; kill(p.processIdentifier, SIGKILL); break }
            usleep(2000)
        }
        p.waitUntilExit()
        try? fh.close()
        let seconds = Double(DispatchTimeLite.now() - t0) / 1e9
        let output = (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? ""
        let status = p.terminationReason == .uncaughtSignal ? -p.terminationStatus : p.terminationStatus
        return Result(status: status, output: output, seconds: seconds, timedOut: timedOut)
    }
}

/// A small TAP 14 parser: version line, one plan, numbered test points in order, YAML blocks
/// (`  ---` … `  ...`) right after a test point, comments; anything else is an error.
struct TAPDocument {
    struct Point { let ok: Bool; let number: Int; let description: String; let directive: String?; var yaml: [String: String] = [:] }
    var plan: Int?
    var points: [Point] = []
    var comments: [String] = []

    static func parse(_ text: String) throws -> TAPDocument {
        struct TAPError: Error, CustomStringConvertible { let description: String }
        var doc = TAPDocument()
        var lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        if lines.last == "" { lines.removeLast() }
        guard lines.first == "TAP version 14" else { throw TAPError(description: "first line is not 'TAP version 14': \(lines.first ?? "")") }
        var i = 1
        var path: [String] = []   // YAML nesting keys
        while i < lines.count {
            let l = lines[i]
            if l.hasPrefix("1..") {
                guard doc.plan == nil, let n = Int(l.dropFirst(3)) else { throw TAPError(description: "bad or second plan at line \(i + 1): \(l)") }
                doc.plan = n
            } else if l.hasPrefix("ok ") || l.hasPrefix("not ok ") {
                let ok = l.hasPrefix("ok ")
                let rest = l.dropFirst(ok ? 3 : 7)
                let numText = rest.prefix { $0.isNumber }
                guard let n = Int(numText), n == doc.points.count + 1 else { throw TAPError(description: "test point out of order at line \(i + 1): \(l)") }
                var desc = String(rest.dropFirst(numText.count))
                if desc.hasPrefix(" - ") { desc = String(desc.dropFirst(3)) }
                var directive: String? = nil
                if let hash = desc.range(of: " # ") { directive = String(desc[hash.upperBound...]); desc = String(desc[..<hash.lowerBound]) }
                doc.points.append(Point(ok: ok, number: n, description: desc, directive: directive))
            } else if l == "  ---" {
                guard !doc.points.isEmpty, i > 0, lines[i - 1].hasPrefix("ok ") || lines[i - 1].hasPrefix("not ok ") else {
                    throw TAPError(description: "YAML block not under a test point at line \(i + 1)")
                }
                i += 1
                path = []
                while i < lines.count && lines[i] != "  ..." {
                    let y = lines[i]
                    guard y.hasPrefix("  ") else { throw TAPError(description: "YAML line not indented at line \(i + 1): \(y)") }
                    let body = y.dropFirst(2)
                    let depth = body.prefix { $0 == " " }.count / 2
                    let item = body.drop { $0 == " " }
                    if let colon = item.range(of: ":") {
                        let key = String(item[..<colon.lowerBound]).replacingOccurrences(of: "- ", with: "")
                        var value = String(item[colon.upperBound...]).trimmingCharacters(in: .whitespaces)
                        path = Array(path.prefix(depth)) + [key]
                        if value.hasPrefix("\"") {
                            guard let data = ("[" + value + "]").data(using: .utf8),
                                  let arr = try? JSONSerialization.jsonObject(with: data) as? [String], let s = arr.first else {
                                throw TAPError(description: "bad YAML string at line \(i + 1): \(value)")
                            }
                            value = s
                        }
                        if !value.isEmpty, doc.points[doc.points.count - 1].yaml[path.joined(separator: ".")] == nil {
                            doc.points[doc.points.count - 1].yaml[path.joined(separator: ".")] = value
                        }
                    }
                    i += 1
                }
                guard i < lines.count else { throw TAPError(description: "YAML block not closed") }
            } else if l.hasPrefix("#") {
                doc.comments.append(l)
            } else {
                throw TAPError(description: "not a TAP line at \(i + 1): \(l)")
            }
            i += 1
        }
        guard let plan = doc.plan, plan == doc.points.count else { throw TAPError(description: "plan \(doc.plan.map(String.init) ?? "missing") but \(doc.points.count) test points") }
        return doc
    }
}
