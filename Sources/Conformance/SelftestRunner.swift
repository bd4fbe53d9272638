/// Runs the suite and reports in kselftest/TAP or JSON form.
public struct SelftestRunner {
    public enum Format: String, CaseIterable, Sendable { case tap, json }
    public enum Outcome: String, Sendable { case pass, fail, skip }
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

    /// Runs every selected test, printing each result as it finishes through `emit`.
    public func run(emit: (String) -> Void) -> [Result] {
        let list = selected
        if format == .tap { emit("TAP version 13"); emit("1..\(list.count)") }
        var results: [Result] = []
        for (i, (test, variant)) in list.enumerated() {
            let name = test.fullName(variant)
            let t0 = ContinuousClock.now
            let r: Result
            if let needs = test.needs {
                r = Result(name: name, outcome: .skip, message: "needs huge pages (\(needs))", seconds: 0)
            } else if let failure = test.run(variant) {
                r = Result(name: name, outcome: .fail, message: failure.description, seconds: elapsed(t0))
            } else {
                r = Result(name: name, outcome: .pass, message: nil, seconds: elapsed(t0))
            }
            results.append(r)
            switch format {
            case .tap:
                switch r.outcome {
                case .pass: emit("ok \(i + 1) \(name)")
                case .skip: emit("ok \(i + 1) \(name) # SKIP \(r.message ?? "")")
                case .fail: emit("not ok \(i + 1) \(name)"); emit("# \(r.message ?? "")")
                }
            case .json:
                let msg = r.message.map { ", \"message\": \"\(jsonEscape($0))\"" } ?? ""
                emit("{\"name\": \"\(name)\", \"result\": \"\(r.outcome.rawValue)\", \"seconds\": \(String(format3(r.seconds)))\(msg)}")
            }
        }
        let passed = results.filter { $0.outcome == .pass }.count
        let failed = results.filter { $0.outcome == .fail }.count
        let skipped = results.filter { $0.outcome == .skip }.count
        if format == .tap { emit("# \(passed) passed, \(failed) failed, \(skipped) skipped") }
        emit("\(passed) passed, \(failed) failed, \(skipped) skipped")
        return results
    }

    private func elapsed(_ t0: ContinuousClock.Instant) -> Double {
        let d = ContinuousClock.now - t0
        return Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
    }
}

func format3(_ v: Double) -> String {
    let ms = Int((v * 1000).rounded())
    return "\(ms / 1000).\(String(ms % 1000).leftPad(3))"
}

extension String {
    func leftPad(_ n: Int) -> String { String(repeating: "0", count: max(0, n - count)) + self }
}

func jsonEscape(_ s: String) -> String {
    var out = ""
    for c in s.unicodeScalars {
        switch c {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\t": out += "\\t"
        default:
            if c.value < 0x20 { out += "\\u" + String(c.value, radix: 16).leftPad(4) } else { out.unicodeScalars.append(c) }
        }
    }
    return out
}
