import Devices
import MMCore
import Report
#if canImport(Glibc)
import Glibc
#endif

/// `hmm demo` (the showcase): workloads on the GPU-like SVM device under every policy, with
/// progress as it goes, the comparison table, and a report: `index.html` (SVG plots) and
/// `trace.json` (Chrome trace events; open it in ui.perfetto.dev).
struct SVMShowcase {
    let workloads: [SVMWorkloadKind]
    let pages: Int
    let deviceMiB: UInt64
    let machineMiB: UInt64
    let reportDir: String
    let traceOut: String?

    /// Runs everything; returns whether every run's data and invariants were right.
    func run() throws -> Bool {
        // The report's place first: a directory that cannot be written fails before the runs.
        mkdir(reportDir, 0o755)
        let index = reportDir + "/index.html", tracePath = traceOut ?? reportDir + "/trace.json"
        try write(index, ""); try write(tracePath, "")
        var results: [SVMRunResult] = []
        let params = "\(pages) pages (\(pages * 4 / 1024) MiB) per workload on a \(deviceMiB) MiB device, 4 engines, \(machineMiB) MiB of RAM"
        print("SVM device showcase: \(params)")
        for k in workloads {
            for p in SVMRunner.policyNames {
                print("  \(k.rawValue) under \(p) … ", terminator: ""); fflush(nil)
                let r = try SVMRunner.run(k, policy: SVMRunner.policy(named: p)!, pages: pages, engines: 4, rounds: 4,
                                          machineMiB: machineMiB, deviceMiB: deviceMiB, trace: SVMTrace())
                let ok = r.mismatches == 0 && r.invariantProblems.isEmpty
                print("\(ok ? "ok" : "WRONG"): \(r.counter("faults")) faults, \(SVMReport.ms(r.virtualNanoseconds)) ms virtual, \(SVMReport.ms(r.wallNanoseconds)) ms wall")
                results.append(r)
            }
        }
        print("")
        print(SVMTable.text(results), terminator: "")
        try write(index, SVMReport.html(results, title: "swift-hmm: the SVM device under its policies", parameters: params))
        try write(tracePath, TraceEvents.json(results.compactMap { r in r.trace.map { ("\(r.workload.rawValue) under \(r.policy)", $0) } }, engines: 4))
        print("\nreport: \(index)\ntrace:  \(tracePath) (open it in ui.perfetto.dev)")
        return results.allSatisfy { $0.mismatches == 0 && $0.invariantProblems.isEmpty }
    }

    private func write(_ path: String, _ text: String) throws {
        guard let f = fopen(path, "w") else { throw DemoError(description: "cannot write \(path): \(String(cString: strerror(errno)))") }
        var t = text
        let n = t.withUTF8 { fwrite($0.baseAddress, 1, $0.count, f) }
        let closed = fclose(f) == 0
        guard n == t.utf8.count, closed else { throw DemoError(description: "cannot write \(path): \(String(cString: strerror(errno)))") }
    }
}

/// The comparison table `hmm svm` and `hmm demo` print.
enum SVMTable {
    static func text(_ results: [SVMRunResult]) -> String {
        let head = ["workload", "policy", "faults", "batches", "dups", "to dev", "to sys", "MiB moved", "evictions", "remote", "excl",
                    "thrash", "tlb hit %", "cpu passes", "virtual ms", "wall ms", "data"]
        var rows: [[String]] = []
        for r in results {
            let ok = r.mismatches == 0 && r.invariantProblems.isEmpty
            let moved = Double(r.counter("bytes_to_device") + r.counter("bytes_to_system")) / Double(1 << 20)
            var row = [r.workload.rawValue, r.policy]
            for name in ["faults", "batches", "duplicates", "migrated_to_device", "migrated_to_system"] { row.append(String(r.counter(name))) }
            row.append(fmt(moved))
            for name in ["evictions", "remote_maps", "exclusive_grabs", "thrashing"] { row.append(String(r.counter(name))) }
            let lookups = r.counter("tlb_hits") + r.counter("tlb_misses")
            row.append(lookups == 0 ? "-" : fmt(100 * Double(r.counter("tlb_hits")) / Double(lookups)))
            row.append(r.cpuThreads == 0 ? "-" : String(r.cpuPasses))
            row.append(fmt(Double(r.virtualNanoseconds) / 1e6))
            row.append(fmt(Double(r.wallNanoseconds) / 1e6))
            row.append(ok ? "ok" : "WRONG: \(r.mismatches) words, \(r.invariantProblems.prefix(2))")
            rows.append(row)
        }
        let widths = head.indices.map { c in ([head[c]] + rows.map { $0[c] }).map(\.count).max()! }
        func line(_ cells: [String]) -> String {
            var parts: [String] = []
            for c in cells.indices {
                let pad = String(repeating: " ", count: widths[c] - cells[c].count)
                parts.append(c < 2 || c == cells.count - 1 ? cells[c] + pad : pad + cells[c])
            }
            return parts.joined(separator: "  ")
        }
        return ([line(head)] + rows.map(line)).joined(separator: "\n") + "\n"
    }
}
