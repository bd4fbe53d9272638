/// The kernel's and swift-hmm's results for the same selftest cases, side by side.
public struct SelftestComparison: Sendable {
    /// swift-hmm's result for one case (from `hmm selftest`).
    public struct ModelCase: Sendable, Equatable {
        public let name: String
        /// "pass", "fail", "skip" or "xfail" (fails as the kernel is known to).
        public let outcome: String
        public let seconds: Double
        public let message: String?
        /// The id in docs/linux-divergences.md of a known, documented difference from the
        /// kernel in this case.
        public let divergence: String?
        public init(name: String, outcome: String, seconds: Double, message: String?, divergence: String? = nil) {
            self.name = name; self.outcome = outcome; self.seconds = seconds; self.message = message; self.divergence = divergence
        }
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

    /// Rows in swift-hmm's order, then cases only the kernel ran. `kernelNotRun` explains a
    /// case the model ran that has no kernel result (a variant the oracle was not asked for).
    public init(kernel: KernelSelftestRun, model: [ModelCase], kernelNotRun: (String) -> String) {
        kernelRelease = kernel.kernelRelease
        var rows: [Row] = []
        for m in model {
            guard let k = kernel.outcome(of: m.name) else {
                rows.append(Row(name: m.name, kernel: nil, model: m, verdict: m.outcome == "fail" ? .different : .notCompared,
                                note: m.outcome == "fail" ? "swift-hmm fails: \(m.message ?? "")" : "kernel: \(kernelNotRun(m.name))"))
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

    static func compare(_ k: KernelSelftestRun.Case, _ m: ModelCase) -> Row {
        let row = compareOutcomes(k, m)
        if row.verdict == .different, let id = m.divergence, k.outcome != .error {
            return Row(name: row.name, kernel: k, model: m, verdict: .documented, note: "\(id) in docs/linux-divergences.md: \(row.note ?? "")")
        }
        return row
    }

    static func compareOutcomes(_ k: KernelSelftestRun.Case, _ m: ModelCase) -> Row {
        switch (k.outcome, m.outcome) {
        case (.pass, "pass"), (.fail, "fail"):
            return Row(name: m.name, kernel: k, model: m, verdict: k.outcome == .pass ? .same : .different,
                       note: k.outcome == .pass ? nil : "both fail: kernel \(k.detail ?? ""); swift-hmm \(m.message ?? "")")
        case (.fail, "xfail"):
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
