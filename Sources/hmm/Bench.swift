import ArgumentParser
import Conformance
import Devices
import HMM
import MMCore
import MMSync
import NativeBaselines

/// `hmm bench`: each figure next to a native baseline measured in the same run.
struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure swift-hmm against native baselines taken in the same run.",
        discussion: """
            Every row is a median of several repetitions (with min…max), the baseline's median, \
            the ratio (swift-hmm ÷ baseline for times; swift-hmm's rate ÷ baseline's rate for \
            throughput; the value itself for memory), the target and whether it is met. \
            A ratio marked * is the median of each repetition's own ratio against the \
            baseline measured beside it (\"paired\": true in JSON). \
            Run in release mode: swift run -c release hmm bench.
            """)

    enum Format: String, ExpressibleByArgument, CaseIterable { case table, json }

    @Flag(help: "Small sizes and one repetition: a smoke test that every figure runs.")
    var quick = false

    @Option(help: "Output format: table or json.")
    var format: Format = .table

    @Option(help: "Run only figures whose name contains this text.")
    var filter: String?

    @Option(help: "Repetitions per figure (default 5, 1 with --quick); more reps make a steadier profile.")
    var reps: Int?

    @Option(help: "Also write the run to this file (JSON Lines: the commit, date and machine, then one row per line).")
    var save: String?

    @Option(help: "Compare each figure with a run saved by --save: value and ratio before and after.")
    var compare: String?

    func validate() throws {
        if let r = reps, !(1...1000).contains(r) { throw ValidationError("--reps must be between 1 and 1000") }
    }

    func run() throws {
        // Read the old run and try the new file first: a bad path fails before minutes of
        // measuring.
        let old = try compare.map { path in
            do { return try BenchRecord.load(path) } catch { throw ValidationError("--compare: \(error)") }
        }
        if let save {
            do { try BenchRecord.checkWritable(save) } catch { throw ValidationError("--save: \(error)") }
        }
        var suite = BenchSuite(quick: quick, reps: reps)
        let figures = suite.figures.filter { f in filter.map { f.name.contains($0) } ?? true }
        if figures.isEmpty { throw ValidationError("--filter '\(filter ?? "")' matches no figure; names: \(suite.figures.map(\.name).joined(separator: ", "))") }
        if format == .table { print(BenchRow.header) }
        var missed = 0
        var measured: [BenchRow] = []
        for f in figures {
            let rows: [BenchRow]
            do { rows = try f.run(&suite) } catch {
                print(format == .json ? "{\"name\": \"\(f.name)\", \"error\": \"\(error)\"}" : "\(f.name): failed: \(error)")
                missed += 1
                continue
            }
            measured += rows
            for r in rows {
                print(format == .json ? r.json : r.tableLine)
                if !r.met { missed += 1 }
                fflush(nil)   // all streams (stdout is a C global Swift 6 will not share)
            }
        }
        if format == .table { print("\(missed == 0 ? "all targets met" : "\(missed) target(s) missed")") }
        if let old {
            // With --format json, stdout stays JSON Lines: the comparison goes to stderr.
            for line in BenchRecord.comparison(old: old, new: measured) {
                let text = line.hasPrefix("#") ? line : "# " + line
                if format == .json { BenchRecord.printError(text) } else { print(text) }
            }
        }
        if let save { try BenchRecord.save(save, header: BenchRecord.header(quick: quick, reps: suite.reps), rows: measured) }
    }
}

/// One measured figure.
struct BenchRow {
    /// `floor`: the value itself must reach the target (an absolute figure, such as steps/s).
    enum Kind { case time, rate, memory, floor }
    let name: String
    let unit: String
    let value: Double
    let baseline: Double
    let spread: (Double, Double)
    let kind: Kind
    let target: Double
    /// A ratio measured pair by pair (the median of each repetition's own figure over the
    /// baseline measured beside it) instead of the medians' ratio, for figures whose host
    /// state changes between repetitions; the table marks it with `*`.
    var pairedRatio: Double? = nil

    var ratio: Double { pairedRatio ?? value / baseline }
    var met: Bool {
        switch kind {
        case .time: return ratio <= target
        case .rate: return ratio >= target
        case .memory: return value <= target
        case .floor: return value >= target
        }
    }
    var targetText: String {
        switch kind {
        case .time: return "≤ \(fmt(target))"
        case .rate: return "≥ \(fmt(target))"
        case .memory: return "≤ \(fmt(target)) \(unit)"
        case .floor: return "≥ \(fmt(target)) \(unit)"
        }
    }

    static let header = pad("figure", 58) + pad("swift-hmm", 26) + pad("baseline", 14) + pad("ratio", 9) + pad("target", 14) + "met"
    var tableLine: String {
        pad(name, 58) + pad("\(fmt(value)) \(unit) [\(fmt(spread.0))…\(fmt(spread.1))]", 26) + pad("\(fmt(baseline)) \(unit)", 14)
            + pad(fmt(ratio) + (pairedRatio == nil ? "" : "*"), 9) + pad(targetText, 14) + (met ? "yes" : "no")
    }
    var json: String {
        "{\"name\": \"\(name)\", \"unit\": \"\(unit)\", \"value\": \(fmt(value)), \"min\": \(fmt(spread.0)), \"max\": \(fmt(spread.1)), "
            + "\"baseline\": \(fmt(baseline)), \"ratio\": \(fmt(ratio)), \"target\": \(fmt(target)), "
            + "\"test\": \"\(kind == .memory || kind == .floor ? "value" : "ratio") \(kind == .rate || kind == .floor ? ">=" : "<=") target\", \"met\": \(met)"
            + (pairedRatio == nil ? "}" : ", \"paired\": true}")
    }
}

func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s + " " : s + String(repeating: " ", count: n - s.count) }
func fmt(_ v: Double) -> String {
    if v == 0 { return "0" }
    if abs(v) >= 1000 { return String(Int(v.rounded())) }
    var s = String(Double(Int((v * 1000).rounded())) / 1000)
    if s.hasSuffix(".0") { s.removeLast(2) }
    return s
}

/// Medians and spreads of a figure and its baseline, measured in alternation (figure, baseline,
/// figure, …) so that a slow spell of a shared machine weighs on both, not on one.
func measurePair(_ reps: Int, _ figure: () throws -> Double, _ baseline: () throws -> Double) rethrows
    -> (figure: (median: Double, min: Double, max: Double), baseline: (median: Double, min: Double, max: Double)) {
    var f: [Double] = [], b: [Double] = []
    for _ in 0..<max(reps, 1) { f.append(try figure()); b.append(try baseline()) }
    return (spread(f), spread(b))
}

/// Median, minimum and maximum of a non-empty set of measurements.
func spread(_ v: [Double]) -> (median: Double, min: Double, max: Double) {
    let s = v.sorted()
    return (s[s.count / 2], s[0], s[s.count - 1])
}

func seconds(_ body: () throws -> Void) rethrows -> Double {
    let t0 = nb_now()
    try body()
    return nb_now() - t0
}

#if canImport(Glibc)
import Glibc
#endif
