/// The real kernel's results for the HMM selftests, read from what
/// `tools/kernel-oracle/oracle.sh selftests` prints: the kselftest harness's TAP for each case
/// (run alone with `hmm-tests -r FIXTURE.VARIANT.TEST`), then
/// `@@CASE FIXTURE.VARIANT.TEST STATUS T0 T1` (exit status, `/proc/uptime` before and after),
/// and at the end `@@KERNEL RELEASE`.
public struct KernelSelftestRun: Sendable, Equatable {
    public enum Outcome: String, Sendable, Equatable {
        case pass, fail, skip
        /// The case ended without a result line (a crash, a timeout, an oops).
        case error
    }

    public struct Case: Sendable, Equatable {
        public let name: String
        public let outcome: Outcome
        /// The skip reason, or the harness's lines about the failure.
        public let detail: String?
        public let exitStatus: Int
        /// Wall time inside the VM (centisecond resolution).
        public let seconds: Double
    }

    /// `uname -r` inside the VM, if the run got that far.
    public var kernelRelease: String?
    public var cases: [Case] = []
    /// What the VM's init reported (`@@ORACLE-NOTE`, e.g. a module that did not load).
    public var notes: [String] = []

    public init(kernelRelease: String? = nil, cases: [Case] = []) {
        self.kernelRelease = kernelRelease; self.cases = cases
    }

    public func outcome(of name: String) -> Case? { cases.first { $0.name == name } }

    public struct ParseError: Error, CustomStringConvertible, Equatable {
        public let line: Int
        public let message: String
        public var description: String { "kernel oracle output, line \(line): \(message)" }
    }

    /// Parses the oracle's output. Lines before a case's `@@CASE` marker belong to that case;
    /// the kernel's harness prints `ok N NAME`, `ok N NAME # SKIP reason` or `not ok N NAME`.
    /// A run without any case or without its `@@KERNEL` line (cut off) is an error.
    public static func parse(_ text: String) throws(ParseError) -> KernelSelftestRun {
        var run = KernelSelftestRun()
        var block: [String] = []
        var lineNumber = 0
        // By bytes: "\r\n" is one Character, so a split on "\n" would not see it.
        for raw in text.utf8.split(separator: 0x0A, omittingEmptySubsequences: false) {
            lineNumber += 1
            let line = String(decoding: raw.last == 0x0D ? raw.dropLast() : raw, as: UTF8.self)
            if line.hasPrefix("@@KERNEL ") {
                run.kernelRelease = String(line.dropFirst(9)).trimmingBlanks
            } else if line.hasPrefix("@@ORACLE-NOTE ") {
                run.notes.append(String(line.dropFirst(14)))
            } else if line.hasPrefix("@@CASE ") {
                let f = line.split(separator: " ").map(String.init)
                guard f.count == 5, let status = Int(f[2]), let t0 = Double(f[3]), let t1 = Double(f[4]),
                      t0.isFinite, t1.isFinite, t0 >= 0, t1 >= t0, t1 - t0 < 1e6 else {
                    throw ParseError(line: lineNumber, message: "expected '@@CASE NAME STATUS T0 T1', got '\(line)'")
                }
                guard f[1].split(separator: ".").count == 3 else {
                    throw ParseError(line: lineNumber, message: "expected a FIXTURE.VARIANT.TEST name, got '\(f[1])'")
                }
                guard run.outcome(of: f[1]) == nil else {
                    throw ParseError(line: lineNumber, message: "case \(f[1]) reported twice")
                }
                run.cases.append(caseResult(name: f[1], status: status, seconds: ((t1 - t0) * 100).rounded() / 100, block: block))
                block = []
            } else {
                block.append(line)
            }
        }
        guard !run.cases.isEmpty else { throw ParseError(line: lineNumber, message: "no '@@CASE' line: the kernel ran no case") }
        guard run.kernelRelease != nil else {
            throw ParseError(line: lineNumber, message: "no '@@KERNEL' line at the end: the run was cut off")
        }
        return run
    }

    /// One case's result from its block of harness output.
    static func caseResult(name: String, status: Int, seconds: Double, block: [String]) -> Case {
        let diagnostics = block.filter { $0.hasPrefix("# ") && !$0.hasPrefix("# Starting") && !$0.hasPrefix("# PASSED")
            && !$0.hasPrefix("# FAILED") && !$0.hasPrefix("# Totals") && !$0.hasPrefix("# [INFO]")
            && !$0.contains(" RUN ") && !$0.contains(" OK ") && !$0.contains(" SKIP ") && !$0.contains(" FAIL ") }
        for line in block {
            let words = line.split(separator: " ", maxSplits: 3).map(String.init)
            if words.count >= 3, words[0] == "ok", words[2] == name || words[2].hasPrefix(name + " ") {
                if let r = line.suffixAfter(" # SKIP") {
                    let reason = r.trimmingBlanks
                    return Case(name: name, outcome: .skip, detail: reason.isEmpty ? "skipped" : reason, exitStatus: status, seconds: seconds)
                }
                if let r = line.suffixAfter(" # XFAIL") {
                    // The harness's own expected failure: nothing to compare a pass with.
                    return Case(name: name, outcome: .skip, detail: "the kernel's harness: XFAIL \(r.trimmingBlanks)", exitStatus: status, seconds: seconds)
                }
                return Case(name: name, outcome: status == 0 ? .pass : .fail,
                            detail: status == 0 ? nil : "exit status \(status)", exitStatus: status, seconds: seconds)
            }
            if words.count >= 4, words[0] == "not", words[1] == "ok", words[3] == name || words[3].hasPrefix(name + " ") {
                let why = diagnostics.map { String($0.dropFirst(2)) }.joined(separator: "; ")
                return Case(name: name, outcome: .fail, detail: why.isEmpty ? "not ok" : why, exitStatus: status, seconds: seconds)
            }
        }
        let tail = block.suffix(3).joined(separator: "; ")
        return Case(name: name, outcome: .error, detail: "no result line (exit status \(status))\(tail.isEmpty ? "" : ": " + tail)",
                    exitStatus: status, seconds: seconds)
    }
}

extension String {
    /// The text after the first occurrence of `marker`, or nil.
    func suffixAfter(_ marker: String) -> String? {
        let c = Array(utf8), m = Array(marker.utf8)
        guard c.count >= m.count else { return nil }
        for i in 0...(c.count - m.count) where c[i..<(i + m.count)].elementsEqual(m) {
            return String(decoding: c[(i + m.count)...], as: UTF8.self)
        }
        return nil
    }

    var trimmingBlanks: String {
        var s = Substring(self)
        while let c = s.first, c == " " || c == "\t" { s = s.dropFirst() }
        while let c = s.last, c == " " || c == "\t" { s = s.dropLast() }
        return String(s)
    }
}
