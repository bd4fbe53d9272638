extension VMATree {
    /// Problems with the tree's bookkeeping: counts, gaps, ends, order, depth (empty when
    /// consistent).
    func checkInvariants() -> [String] {
        var problems: [String] = []
        var prevEnd = floor
        var index = 0
        func visit(_ node: Node) -> Int {
            if node.n > VMATree.capacity { problems.append("VMA tree node with \(node.n) entries") }
            if node.isLeaf {
                var g: UInt64 = 0
                for t in 0..<node.n {
                    let v = node.vma(t)
                    let from = Swift.max(prevEnd, floor)
                    let want = v.start > from ? v.start - from : 0
                    if node.gaps[t] != want { problems.append("VMA tree gap before \(v) is \(node.gaps[t]), expected \(want)") }
                    if index > 0 && v.start < prevEnd { problems.append("VMA tree out of order at \(v)") }
                    g = Swift.max(g, node.gaps[t])
                    prevEnd = v.end; index += 1
                }
                if node.count != node.n || node.maxGap != g || node.lastEnd != (node.last?.end ?? 0) {
                    problems.append("VMA tree leaf summary stale")
                }
                if node !== root && node.n == 0 { problems.append("VMA tree has an empty leaf") }
                return 1
            }
            var depths = Set<Int>()
            var c = 0, g: UInt64 = 0
            for k in 0..<node.n {
                let ch = node.child(k)
                depths.insert(visit(ch))
                if node.counts[k] != ch.count || node.gaps[k] != ch.maxGap || node.ends[k] != (ch.last?.end ?? 0) {
                    problems.append("VMA tree child summary stale")
                }
                c += ch.count; g = Swift.max(g, ch.maxGap)
            }
            if depths.count > 1 { problems.append("VMA tree leaves at different depths") }
            if node.count != c || node.maxGap != g { problems.append("VMA tree inner summary stale (count \(node.count) vs \(c), gap \(node.maxGap) vs \(g))") }
            if node.n == 0 { problems.append("VMA tree inner node without children") }
            return (depths.first ?? 0) + 1
        }
        _ = visit(root)
        return problems
    }
}
