import Devices
#if canImport(Glibc)
import Glibc
#endif

/// The SVM report (`hmm demo` writes it to `hmm-report/index.html`): the policy table, a bar
/// chart of virtual time per workload and policy, and for each traced run a timeline (each
/// engine's stalls and faults, the fault thread's batches, migrations, in virtual time) and
/// the device-memory residency over address × time. Plain HTML and inline SVG: no script.
public enum SVMReport {
    public static func html(_ runs: [SVMRunResult], title: String, parameters: String) -> String {
        var body = "<h1>\(esc(title))</h1>\n<p>\(esc(parameters))</p>\n"
        body += "<h2>Policies compared</h2>\n" + table(runs) + barChart(runs)
        for r in runs where r.trace != nil {
            body += "<h2>\(esc(r.workload.rawValue)) under \(esc(r.policy))</h2>\n"
            body += "<h3>Timeline (virtual time)</h3>\n" + timeline(r)
            body += "<h3>Device-memory residency (address × virtual time)</h3>\n" + residency(r)
        }
        return """
        <!doctype html>
        <html lang="en"><head><meta charset="utf-8"><title>\(esc(title))</title>
        <style>
        body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; max-width: 1100px; }
        table { border-collapse: collapse; margin: 1em 0; }
        th, td { border: 1px solid #ccc; padding: 2px 8px; text-align: right; }
        th:first-child, td:first-child, th:nth-child(2), td:nth-child(2) { text-align: left; }
        svg { display: block; margin: 0.5em 0 1.5em; background: #fafafa; border: 1px solid #ddd; }
        .bad { color: #b00; font-weight: bold; }
        </style></head>
        <body>
        \(body)
        </body></html>

        """
    }

    static let columns: [(String, String)] = [
        ("faults", "faults"), ("batches", "batches"), ("duplicates", "duplicates"), ("to device", "migrated_to_device"),
        ("to system", "migrated_to_system"), ("evictions", "evictions"), ("remote maps", "remote_maps"),
        ("exclusive", "exclusive_grabs"), ("thrashing", "thrashing"), ("access counters", "access_counters"),
    ]

    static func table(_ runs: [SVMRunResult]) -> String {
        var s = "<table><tr><th>workload</th><th>policy</th>"
        for (h, _) in columns { s += "<th>\(h)</th>" }
        s += "<th>TLB hits %</th><th>virtual ms</th><th>wall ms</th><th>data</th></tr>\n"
        for r in runs {
            s += "<tr><td>\(r.workload.rawValue)</td><td>\(esc(r.policy))</td>"
            for (_, c) in columns { s += "<td>\(r.counter(c))</td>" }
            let lookups = r.counter("tlb_hits") + r.counter("tlb_misses")
            s += lookups == 0 ? "<td>-</td>" : "<td>\(Double(r.counter("tlb_hits") * 1000 / lookups) / 10)</td>"
            let ok = r.mismatches == 0 && r.invariantProblems.isEmpty
            s += "<td>\(ms(r.virtualNanoseconds))</td><td>\(ms(r.wallNanoseconds))</td>"
            s += ok ? "<td>ok</td>" : "<td class=\"bad\">\(r.mismatches) words wrong</td>"
            s += "</tr>\n"
        }
        return s + "</table>\n"
    }

    static let palette = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1"]

    /// One horizontal bar per run, grouped by workload, virtual time on a log scale.
    static func barChart(_ runs: [SVMRunResult]) -> String {
        let policies = Array(Set(runs.map(\.policy))).sorted()
        let rowH = 16, left = 260, width = 900
        let height = runs.count * rowH + 40
        let maxV = max(1, runs.map { Double($0.virtualNanoseconds) }.max() ?? 1)
        let minV = max(1, runs.map { Double($0.virtualNanoseconds) }.filter { $0 > 0 }.min() ?? 1)
        let lo = log10(minV) - 0.5, hi = log10(maxV)
        let span = max(hi - lo, 0.1), room = Double(width - left - 80)
        func x(_ v: Double) -> Double {
            let at = (log10(max(v, 1)) - lo) / span
            return Double(left) + at * room
        }
        var s = "<svg width=\"\(width)\" height=\"\(height)\" role=\"img\" aria-label=\"virtual time per workload and policy\">\n"
        for (i, r) in runs.enumerated() {
            let y = 20 + i * rowH
            let color = palette[(policies.firstIndex(of: r.policy) ?? 0) % palette.count]
            let w = max(1, x(Double(r.virtualNanoseconds)) - Double(left))
            s += "<text x=\"\(left - 6)\" y=\"\(y + 12)\" text-anchor=\"end\" font-size=\"12\">\(r.workload.rawValue) · \(esc(r.policy))</text>"
            s += "<rect x=\"\(left)\" y=\"\(y + 2)\" width=\"\(f(w))\" height=\"\(rowH - 4)\" fill=\"\(color)\"><title>\(ms(r.virtualNanoseconds)) ms virtual</title></rect>"
            s += "<text x=\"\(f(Double(left) + w + 4))\" y=\"\(y + 12)\" font-size=\"11\">\(ms(r.virtualNanoseconds)) ms</text>\n"
        }
        s += "<text x=\"\(left)\" y=\"14\" font-size=\"11\" fill=\"#666\">virtual time, log scale</text>\n"
        return s + "</svg>\n"
    }

    /// Engines' stalls (fault to replay) and faults, the fault thread's batches, and
    /// migrations, against virtual time, in 500 time buckets: an engine's grey shows the share
    /// of the bucket it spent stalled, its tick how many faults it raised there.
    static func timeline(_ r: SVMRunResult) -> String {
        guard let events = r.trace?.events, !events.isEmpty else { return "<p>no events</p>\n" }
        var engines = 0
        for e in events { if case .kernelStart(let n, _) = e.kind { engines = max(engines, n + 1) } }
        let cols = 500, rowH = 22, left = 110, width = 1000
        let rows = engines + 3, height = rows * rowH + 30
        let tMax = Double(max(1, events.map(\.virtualNs).max() ?? 1))
        let colW = Double(width - left - 10) / Double(cols)
        func col(_ t: UInt64) -> Int { min(cols - 1, Int(Double(t) / tMax * Double(cols))) }
        var stalled = [[Double]](repeating: [Double](repeating: 0, count: cols), count: engines)
        var faults = [[Int]](repeating: [Int](repeating: 0, count: cols), count: engines)
        var batches = [Int](repeating: 0, count: cols), toDevice = [Int](repeating: 0, count: cols), toSystem = [Int](repeating: 0, count: cols)
        var stallFrom: [Int: UInt64] = [:]
        let bucketNs = tMax / Double(cols)
        for e in events {
            switch e.kind {
            case .fault(let engine, _, _) where engine < engines:
                faults[engine][col(e.virtualNs)] += 1
                stallFrom[engine] = e.virtualNs
            case .replay(let engine) where engine < engines:
                guard let t0 = stallFrom.removeValue(forKey: engine), e.virtualNs > t0 else { continue }
                // Spread the stall over the buckets it covers, bucket by bucket.
                let first = col(t0), last = col(e.virtualNs)
                for c in first...last {
                    let lo = max(Double(t0), Double(c) * bucketNs), hi = min(Double(e.virtualNs), Double(c + 1) * bucketNs)
                    if hi > lo { stalled[engine][c] += hi - lo }
                }
            case .batch: batches[col(e.virtualNs)] += 1
            case .toDevice(let a): toDevice[col(e.virtualNs)] += a.count
            case .toSystem(let a, _): toSystem[col(e.virtualNs)] += a.count
            default: continue
            }
        }
        func x(_ c: Int) -> String { f(Double(left) + Double(c) * colW) }
        func tick(_ n: Int, _ peak: Int) -> Double { n == 0 ? 0 : 3 + Double(rowH - 9) * log2(Double(n) + 1) / log2(Double(max(peak, 1)) + 1) }
        var s = "<svg width=\"\(width)\" height=\"\(height)\" role=\"img\" aria-label=\"timeline\">\n"
        for e in 0..<engines { s += label("engine \(e)", y: e * rowH + 15) }
        s += label("fault thread", y: engines * rowH + 15) + label("to device", y: (engines + 1) * rowH + 15)
        s += label("to system", y: (engines + 2) * rowH + 15)
        let peakFaults = faults.flatMap { $0 }.max() ?? 1
        for e in 0..<engines {
            for c in 0..<cols where stalled[e][c] > 0 || faults[e][c] > 0 {
                let share = min(1, stalled[e][c] / bucketNs)
                if share > 0 {
                    s += "<rect x=\"\(x(c))\" y=\"\(e * rowH + 2)\" width=\"\(f(colW + 0.1))\" height=\"\(rowH - 4)\" fill=\"#bbb\" opacity=\"\(f(share))\"/>"
                }
                if faults[e][c] > 0 {
                    let h = tick(faults[e][c], peakFaults)
                    s += "<rect x=\"\(x(c))\" y=\"\(f(Double(e * rowH + rowH - 3) - h))\" width=\"\(f(max(1, colW * 0.6)))\" height=\"\(f(h))\" fill=\"#e15759\"/>"
                }
            }
            s += "\n"
        }
        for (row, counts, color) in [(engines, batches, "#59a14f"), (engines + 1, toDevice, "#4e79a7"), (engines + 2, toSystem, "#f28e2b")] {
            let peak = counts.max() ?? 1
            for c in 0..<cols where counts[c] > 0 {
                let h = tick(counts[c], peak)
                s += "<rect x=\"\(x(c))\" y=\"\(f(Double(row * rowH + rowH - 3) - h))\" width=\"\(f(max(1, colW * 0.8)))\" height=\"\(f(h))\" fill=\"\(color)\"><title>\(counts[c])</title></rect>"
            }
            s += "\n"
        }
        s += timeAxis(left: left, width: width, height: height, end: UInt64(tMax))
        s += "<text x=\"\(width / 2)\" y=\"\(height - 6)\" font-size=\"11\" fill=\"#666\" text-anchor=\"middle\">grey: an engine stalled on its faults (red: faults raised); green: batches serviced; pages migrated each way (log scale)</text>\n"
        return s + "</svg>\n"
    }

    /// The share of each address band resident in device memory, over virtual time.
    static func residency(_ r: SVMRunResult) -> String {
        guard let events = r.trace?.events else { return "" }
        let moves = events.filter { if case .toDevice = $0.kind { return true }; if case .toSystem = $0.kind { return true }; return false }
            .sorted { $0.virtualNs < $1.virtualNs }
        let cols = 120, bands = min(64, r.pages), left = 110, width = 1000, cellW = Double(width - left - 10) / Double(cols), cellH = 4
        let height = bands * cellH + 30
        let tMax = max(1, events.map(\.virtualNs).max() ?? 1)
        let pagesPerBand = Double(r.pages) / Double(bands)
        var resident = Set<UInt64>()
        var perBand = [Int](repeating: 0, count: bands)
        var level = [[Int]](repeating: [Int](repeating: 0, count: cols), count: bands)
        func band(_ a: UInt64) -> Int? {
            guard a >= r.base else { return nil }
            let p = Int((a - r.base) >> 12)
            return p < r.pages ? min(bands - 1, Int(Double(p) / pagesPerBand)) : nil
        }
        var s = "<svg width=\"\(width)\" height=\"\(height)\" role=\"img\" aria-label=\"device-memory residency\">\n"
        s += label("low address", y: 12) + label("high address", y: bands * cellH)
        var k = 0
        for c in 0..<cols {
            let until = UInt64(Double(c + 1) / Double(cols) * Double(tMax))
            while k < moves.count && moves[k].virtualNs <= until {
                switch moves[k].kind {
                case .toDevice(let a): for x in a where resident.insert(x).inserted { if let b = band(x) { perBand[b] += 1 } }
                case .toSystem(let a, _): for x in a where resident.remove(x) != nil { if let b = band(x) { perBand[b] -= 1 } }
                default: break
                }
                k += 1
            }
            for b in 0..<bands { level[b][c] = perBand[b] == 0 ? 0 : 1 + Int(min(1, Double(perBand[b]) / pagesPerBand) * 7) }
        }
        // One rectangle per run of equal shade along time, in eight shades.
        for b in 0..<bands {
            var c = 0
            while c < cols {
                var e = c + 1
                while e < cols && level[b][e] == level[b][c] { e += 1 }
                if level[b][c] > 0 {
                    s += "<rect x=\"\(f(Double(left) + Double(c) * cellW))\" y=\"\(b * cellH)\" width=\"\(f(Double(e - c) * cellW + 0.2))\" height=\"\(cellH)\" fill=\"#4e79a7\" opacity=\"\(f(Double(level[b][c]) / 8))\"/>"
                }
                c = e
            }
            s += "\n"
        }
        s += timeAxis(left: left, width: width, height: height, end: tMax)
        return s + "</svg>\n"
    }

    /// The ends of a plot's virtual-time axis, under it.
    static func timeAxis(left: Int, width: Int, height: Int, end: UInt64) -> String {
        "<text x=\"\(left)\" y=\"\(height - 6)\" font-size=\"11\" fill=\"#666\">0</text>"
            + "<text x=\"\(width - 10)\" y=\"\(height - 6)\" font-size=\"11\" fill=\"#666\" text-anchor=\"end\">\(ms(end)) ms virtual</text>\n"
    }
    static func label(_ t: String, y: Int) -> String { "<text x=\"4\" y=\"\(y)\" font-size=\"11\">\(esc(t))</text>\n" }
    public static func ms(_ ns: UInt64) -> String { f(Double(ns) / 1e6) }
    static func f(_ v: Double) -> String {
        let r = (v * 100).rounded() / 100
        return r == r.rounded() ? String(Int(r)) : String(r)
    }
    /// Text for HTML: `& < > "` as entities.
    static func esc(_ s: String) -> String {
        var out = ""
        for c in s {
            switch c {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            default: out.append(c)
            }
        }
        return out
    }
}
