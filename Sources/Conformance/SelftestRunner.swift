/// Runs the suite and reports in kselftest/TAP or JSON form.
public struct SelftestRunner {
    public enum Format: String, CaseIterable, Sendable { case tap, json }
    /// `xfail`: failed as the real kernel fails it (`Selftest.expectedFailure`).
    public enum Outcome: String, Sendable { case pass, fail, skip, xfail }
    public struct Result: Sendable {
        public let name: String
        public let outcome: Outcome
        public let message: String?
        public let seconds: Double
    }

    public var variants: [Variant]
    public var filter: String?
    public var format: Format

    public init(variants: [Variant] = Variant.allCases, filter: String? = nil, format: Format = .tap) {
        self.variants = variants; self.filter = filter; self.format = format
    }

    /// The (test, variant) pairs selected: `filter` matches a substring of the full name.
    public var selected: [(Selftest, Variant)] {
        variants.flatMap { v in SelftestSuite.all.map { ($0, v) } }
            .filter { t, v in filter.map { t.fullName(v).contains($0) } ?? true }
    }

    /// Runs every selected test. In TAP form each result is printed through `emit` as it
    /// finishes (TAP version 14: plan first, a YAML block under a failure, the summary as a
    /// comment); in JSON form nothing is printed and the caller reports the results.
    public func run(emit: (String) -> Void) -> [Result] {
        let list = selected
        if format == .tap { emit("TAP version 14"); emit("1..\(list.count)") }
        var results: [Result] = []
        for (i, (test, variant)) in list.enumerated() {
            let name = test.fullName(variant)
            let t0 = ContinuousClock.now
            let r: Result
            if let needs = test.needs {
                r = Result(name: name, outcome: .skip, message: "needs huge pages (\(needs))", seconds: 0)
            } else {
                let (outcome, message) = test.classify(variant, test.run(variant))
                r = Result(name: name, outcome: outcome, message: message, seconds: elapsed(t0))
            }
            results.append(r)
            guard format == .tap else { continue }
            switch r.outcome {
            case .pass: emit("ok \(i + 1) - \(name)")
            case .skip: emit("ok \(i + 1) - \(name) # SKIP \(r.message ?? "")")
            case .xfail: emit("not ok \(i + 1) - \(name) # TODO expected failure: \(r.message ?? "")")
            case .fail:
                emit("not ok \(i + 1) - \(name)")
                emit("  ---")
                emit("  message: \"\(jsonEscape(r.message ?? ""))\"")
                emit("  severity: fail")
                if let m = r.message, let (e, g) = splitExpectedGot(m) {
                    emit("  expected: \"\(jsonEscape(e))\"")
                    emit("  got: \"\(jsonEscape(g))\"")
                }
                emit("  ...")
            }
        }
        if format == .tap {
            let passed = results.filter { $0.outcome == .pass }.count
            let failed = results.filter { $0.outcome == .fail }.count
            let skipped = results.filter { $0.outcome == .skip }.count
            let xfailed = results.filter { $0.outcome == .xfail }.count
            emit("# \(passed) passed, \(failed) failed, \(skipped) skipped" + (xfailed > 0 ? ", \(xfailed) failed as on Linux 7.2" : ""))
        }
        return results
    }

    private func elapsed(_ t0: ContinuousClock.Instant) -> Double {
        let d = ContinuousClock.now - t0
        return Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
    }
}

/// "… expected X, got Y" → (X, Y).
func splitExpectedGot(_ m: String) -> (String, String)? {
    let c = Array(m)
    func find(_ s: String, from: Int) -> Int? {
        let n = Array(s)
        guard c.count >= n.count, from <= c.count - n.count else { return nil }
        return (from...(c.count - n.count)).first { Array(c[$0..<($0 + n.count)]) == n }
    }
    guard c.count >= 9, let e = find("expected ", from: 0), e + 9 <= c.count, let g = find(", got ", from: e + 9) else { return nil }
    return (String(c[(e + 9)..<g]), String(c[(g + 6)...]))
}

func format3(_ v: Double) -> String {
    let ms = Int((v * 1000).rounded())
    return "\(ms / 1000).\(String(ms % 1000).leftPad(3))"
}

extension String {
    func leftPad(_ n: Int) -> String { String(repeating: "0", count: max(0, n - count)) + self }
}

/// The text of a JSON string (without quotes); also a valid YAML double-quoted scalar, so C0,
/// DEL and C1 controls are escaped too.
public func jsonEscape(_ s: String) -> String {
    var out = ""
    for c in s.unicodeScalars {
        switch c {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        default:
            if c.value < 0x20 || (c.value >= 0x7F && c.value <= 0x9F) {
                out += "\\u" + String(c.value, radix: 16).leftPad(4)
            } else { out.unicodeScalars.append(c) }
        }
    }
    return out
}
