/// The kernel's and swift-hmm's results for the same selftest cases, side by side.
public struct SelftestComparison: Sendable {
    /// swift-hmm's result for one case (from `hmm selftest`).
    public struct ModelCase: Sendable, Equatable {
        public let name: String
        /// "pass", "fail", "skip" or "xfail" (fails as the kernel is known to).
        public let outcome: String
        public let seconds: Double
        public let message: String?
        /// A known, documented difference from the kernel in this case.
        public let divergence: Divergence?
        /// For an expected failure ("xfail"): where the kernel's test fails too
        /// (`hmm-tests.c:LINE`); the kernel's failure must name it.
        public let kernelFailure: String?
        public init(name: String, outcome: String, seconds: Double, message: String?, divergence: Divergence? = nil,
                    kernelFailure: String? = nil) {
            self.name = name; self.outcome = outcome; self.seconds = seconds; self.message = message
            self.divergence = divergence; self.kernelFailure = kernelFailure
        }
    }

    /// A difference listed in docs/linux-divergences.md: its id and the one combination of
    /// outcomes it explains (any other difference is still *different*).
    public struct Divergence: Sendable, Equatable {
        public let id: String
        public let kernel: KernelSelftestRun.Outcome
        public let model: String
        public init(id: String, kernel: KernelSelftestRun.Outcome, model: String) { self.id = id; self.kernel = kernel; self.model = model }
    }

    public enum Verdict: String, Sendable, Equatable {
        /// Both ran it, with the same outcome.
        case same
        /// Both ran it and the outcomes differ, or swift-hmm failed: a fidelity bug until fixed
        /// or documented as a divergence.
        case different
        /// The outcomes differ for a reason documented in docs/linux-divergences.md.
        case documented = "documented divergence"
        /// Only one side has a result (the kernel skipped it or did not run it), with the reason.
        case notCompared = "not compared"
    }

    public struct Row: Sendable, Equatable {
        public let name: String
        public let kernel: KernelSelftestRun.Case?
        public let model: ModelCase?
        public let verdict: Verdict
        /// Why not compared, or what differs.
        public let note: String?
    }

    public let kernelRelease: String?
    public let rows: [Row]

    /// Rows in swift-hmm's order, then cases only the kernel ran. A case the model ran with no
    /// kernel result is *different* when the kernel ran its fixture and variant (a case lost
    /// from the run); otherwise `kernelNotRun` explains it (a variant the oracle was not asked
    /// for).
    public init(kernel: KernelSelftestRun, model: [ModelCase], kernelNotRun: (String) -> String) {
        kernelRelease = kernel.kernelRelease
        let kernelGroups = Set(kernel.cases.map { Self.group($0.name) })
        var rows: [Row] = []
        for m in model {
            guard let k = kernel.outcome(of: m.name) else {
                if m.outcome == "fail" {
                    rows.append(Row(name: m.name, kernel: nil, model: m, verdict: .different, note: "swift-hmm fails: \(m.message ?? "")"))
                } else if kernelGroups.contains(Self.group(m.name)) {
                    rows.append(Row(name: m.name, kernel: nil, model: m, verdict: .different,
                                    note: "no result in the kernel's run of \(Self.group(m.name)) (a case lost, or one the kernel's suite lacks)"))
                } else {
                    rows.append(Row(name: m.name, kernel: nil, model: m, verdict: .notCompared, note: "kernel: \(kernelNotRun(m.name))"))
                }
                continue
            }
            rows.append(Self.compare(k, m))
        }
        let modelNames = Set(model.map(\.name))
        for k in kernel.cases where !modelNames.contains(k.name) {
            rows.append(Row(name: k.name, kernel: k, model: nil, verdict: .notCompared, note: "swift-hmm did not run it (filtered out, or not in its suite)"))
        }
        self.rows = rows
    }

    /// `FIXTURE.VARIANT` of a case name.
    static func group(_ name: String) -> String { name.split(separator: ".").prefix(2).joined(separator: ".") }

    static func compare(_ k: KernelSelftestRun.Case, _ m: ModelCase) -> Row {
        let row = compareOutcomes(k, m)
        if row.verdict == .different, let d = m.divergence, k.outcome == d.kernel, m.outcome == d.model {
            return Row(name: row.name, kernel: k, model: m, verdict: .documented, note: "\(d.id) in docs/linux-divergences.md: \(row.note ?? "")")
        }
        return row
    }

    static func compareOutcomes(_ k: KernelSelftestRun.Case, _ m: ModelCase) -> Row {
        switch (k.outcome, m.outcome) {
        case (.pass, "pass"), (.fail, "fail"):
            return Row(name: m.name, kernel: k, model: m, verdict: k.outcome == .pass ? .same : .different,
                       note: k.outcome == .pass ? nil : "both fail: kernel \(k.detail ?? ""); swift-hmm \(m.message ?? "")")
        case (.fail, "xfail"):
            // The same failure: the kernel's must name the assertion the model's test expects.
            if let at = m.kernelFailure, k.detail?.contains(at) != true {
                return Row(name: m.name, kernel: k, model: m, verdict: .different,
                           note: "both fail, but the kernel not at \(at): \(k.detail ?? "")")
            }
            return Row(name: m.name, kernel: k, model: m, verdict: .same, note: "both fail, as expected: kernel \(k.detail ?? "")")
        case (.skip, "skip"):
            return Row(name: m.name, kernel: k, model: m, verdict: .notCompared, note: "both skipped: kernel \(k.detail ?? "")")
        case (.skip, "pass"):
            return Row(name: m.name, kernel: k, model: m, verdict: .notCompared, note: "the kernel skipped it: \(k.detail ?? "")")
        case (.error, _):
            return Row(name: m.name, kernel: k, model: m, verdict: .different, note: "the kernel's run broke: \(k.detail ?? "")")
        default:
            let kernelSide = k.outcome == .pass ? "passes" : "\(k.outcome.rawValue)s (\(k.detail ?? ""))"
            let modelSide = m.outcome == "pass" ? "passes" : "\(m.outcome)s (\(m.message ?? ""))"
            return Row(name: m.name, kernel: k, model: m, verdict: .different, note: "the kernel \(kernelSide); swift-hmm \(modelSide)")
        }
    }

    public func count(_ v: Verdict) -> Int { rows.filter { $0.verdict == v }.count }

    /// The table as text, one row per case, and a summary line.
    public func text() -> [String] {
        func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s + " " : s + String(repeating: " ", count: n - s.count) }
        func secs(_ s: Double?) -> String { s.map { formatSeconds($0) } ?? "" }
        let width = max(44, (rows.map(\.name.count).max() ?? 0) + 2)
        var lines = ["kernel: Linux \(kernelRelease ?? "(release unknown)") under QEMU; swift-hmm: this build",
                     pad("case", width) + pad("kernel", 8) + pad("time", 9) + pad("swift-hmm", 10) + pad("time", 9) + "verdict"]
        for r in rows {
            var line = pad(r.name, width) + pad(r.kernel?.outcome.rawValue ?? "-", 8) + pad(secs(r.kernel?.seconds), 9)
                + pad(r.model?.outcome ?? "-", 10) + pad(secs(r.model?.seconds), 9) + r.verdict.rawValue
            if let n = r.note { line += ": " + n }
            lines.append(line)
        }
        let kt = rows.compactMap { $0.kernel?.seconds }.reduce(0, +), mt = rows.compactMap { $0.model?.seconds }.reduce(0, +)
        lines.append("# \(count(.same)) same, \(count(.different)) different, \(count(.documented)) documented divergences, \(count(.notCompared)) not compared; "
                     + "kernel \(formatSeconds(kt)), swift-hmm \(formatSeconds(mt))")
        return lines
    }
}

/// "0.15 s", "86 s", "0.003 s".
func formatSeconds(_ s: Double) -> String {
    if s >= 10 { return "\(Int(s.rounded())) s" }
    let ms = Int((s * 1000).rounded())
    let frac = String(ms % 1000)
    return "\(ms / 1000).\(String(repeating: "0", count: 3 - frac.count) + frac) s"
}
