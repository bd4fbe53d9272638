/// The VMAs of one address space in address order (the kernel keeps them in a maple tree).
///
/// A counted B-tree: leaves hold up to `capacity` VMAs, inner nodes up to `capacity` children
/// with each child's element count. Position lookups, address lookups, insertion and removal
/// are O(log n). Each node also keeps the largest free gap below any of its VMAs (the gap
/// before a VMA runs from the previous VMA's end, or from `floor`, to its start), so the
/// top-down search for a free range (`unmapped_area_topdown`) is O(log n) too — as the maple
/// tree's gap tracking makes it.
///
/// A VMA's bounds change in place (split, merge, mremap): whoever changes them calls
/// `boundsChanged(at:)`, which refreshes the gaps before and after it and the ends kept on
/// the way.
///
/// Nodes keep their entries in fixed buffers of unmanaged references and plain numbers, so a
/// lookup touches no reference count (mmap is a hot path: see the `map-count` bench figure).
///
/// Locking: the owning address space's mmap lock (read to look, write to change).
struct VMATree: RandomAccessCollection {
    /// Entries per node (VMAs in a leaf, children in an inner node).
    static let capacity = 32

    final class Node {
        let isLeaf: Bool
        /// Entries in use.
        var n = 0
        /// Leaf: retained VMAs. Inner: retained child nodes.
        let refs: UnsafeMutablePointer<UnsafeMutableRawPointer>
        /// Leaf: the gap before each VMA. Inner: each child's largest gap.
        let gaps: UnsafeMutablePointer<UInt64>
        /// Inner: each child's element count and last VMA's end.
        let counts: UnsafeMutablePointer<Int>
        let ends: UnsafeMutablePointer<UInt64>
        /// Elements below this node, the largest gap among them, the end of the last one.
        var count = 0
        var maxGap: UInt64 = 0
        var lastEnd: UInt64 = 0

        init(leaf: Bool) {
            isLeaf = leaf
            let c = VMATree.capacity + 1
            refs = .allocate(capacity: c); gaps = .allocate(capacity: c)
            counts = .allocate(capacity: c); ends = .allocate(capacity: c)
        }

        deinit {
            for i in 0..<n { Unmanaged<AnyObject>.fromOpaque(refs[i]).release() }
            refs.deallocate(); gaps.deallocate(); counts.deallocate(); ends.deallocate()
        }

        @inline(__always) func vma(_ i: Int) -> VMA { Unmanaged<VMA>.fromOpaque(refs[i]).takeUnretainedValue() }
        @inline(__always) func end(ofVMA i: Int) -> UInt64 { Unmanaged<VMA>.fromOpaque(refs[i])._withUnsafeGuaranteedRef { $0.end } }
        @inline(__always) func start(ofVMA i: Int) -> UInt64 { Unmanaged<VMA>.fromOpaque(refs[i])._withUnsafeGuaranteedRef { $0.start } }
        @inline(__always) func child(_ k: Int) -> Node { Unmanaged<Node>.fromOpaque(refs[k]).takeUnretainedValue() }

        /// Opens slot `i` (entries from `i` move up one).
        func open(_ i: Int) {
            let m = n - i
            if m > 0 {
                memmove(refs + i + 1, refs + i, m * MemoryLayout<UnsafeMutableRawPointer>.stride)
                memmove(gaps + i + 1, gaps + i, m * 8)
                memmove(counts + i + 1, counts + i, m * MemoryLayout<Int>.stride)
                memmove(ends + i + 1, ends + i, m * 8)
            }
            n += 1
        }

        /// Closes slot `i` (entries above move down one); the reference there is the caller's.
        func close(_ i: Int) {
            let m = n - i - 1
            if m > 0 {
                memmove(refs + i, refs + i + 1, m * MemoryLayout<UnsafeMutableRawPointer>.stride)
                memmove(gaps + i, gaps + i + 1, m * 8)
                memmove(counts + i, counts + i + 1, m * MemoryLayout<Int>.stride)
                memmove(ends + i, ends + i + 1, m * 8)
            }
            n -= 1
        }

        /// Moves entries `from...` into the empty node `other`.
        func moveUpperHalf(from: Int, to other: Node) {
            let m = n - from
            memcpy(other.refs, refs + from, m * MemoryLayout<UnsafeMutableRawPointer>.stride)
            memcpy(other.gaps, gaps + from, m * 8)
            memcpy(other.counts, counts + from, m * MemoryLayout<Int>.stride)
            memcpy(other.ends, ends + from, m * 8)
            other.n = m
            n = from
        }

        /// Recomputes the summary from the leaf's VMAs or the children's kept numbers.
        func summarize() {
            if isLeaf {
                count = n
                var g: UInt64 = 0
                for i in 0..<n where gaps[i] > g { g = gaps[i] }
                maxGap = g
                lastEnd = n > 0 ? end(ofVMA: n - 1) : 0
            } else {
                var c = 0, g: UInt64 = 0
                for i in 0..<n { c += counts[i]; if gaps[i] > g { g = gaps[i] } }
                count = c; maxGap = g
                lastEnd = n > 0 ? ends[n - 1] : 0
            }
        }

        /// Refreshes what this node keeps of child `k`.
        @inline(__always) func keep(_ k: Int) {
            let (c, g, e) = summary(ofChild: k)
            counts[k] = c; gaps[k] = g; ends[k] = e
        }

        /// Child `k`'s count, largest gap and last end, read without a reference.
        @inline(__always) func summary(ofChild k: Int) -> (Int, UInt64, UInt64) {
            Unmanaged<Node>.fromOpaque(refs[k])._withUnsafeGuaranteedRef { ($0.count, $0.maxGap, $0.lastEnd) }
        }

        /// `keep(k)` and the node's summary, recomputing the largest gap only when the child's
        /// shrank and was the largest (the common refresh changes one child).
        @inline(__always) func keepAndSummarize(_ k: Int) {
            let (chCount, chGap, chEnd) = summary(ofChild: k)
            let oldGap = gaps[k]
            count += chCount - counts[k]
            counts[k] = chCount; gaps[k] = chGap; ends[k] = chEnd
            if chGap >= maxGap { maxGap = chGap } else if oldGap == maxGap {
                var g: UInt64 = 0
                for i in 0..<n where gaps[i] > g { g = gaps[i] }
                maxGap = g
            }
            lastEnd = ends[n - 1]
        }

        /// The child holding position `i`, and `i` within it (`inserting`: a child's end
        /// position is still inside it).
        @inline(__always) func slot(for i: Int, inserting: Bool = false) -> (Int, Int) {
            var i = i, k = 0
            while k < n - 1 && (inserting ? i > counts[k] : i >= counts[k]) { i -= counts[k]; k += 1 }
            return (k, i)
        }

        /// The node's last VMA (for checking).
        var last: VMA? { n == 0 ? nil : (isLeaf ? vma(n - 1) : child(n - 1).last) }
    }

    private(set) var root = Node(leaf: true)
    /// The lowest address a gap may start at (`mmap_min_addr`).
    let floor: UInt64

    init(floor: UInt64) { self.floor = floor }

    var startIndex: Int { 0 }
    var endIndex: Int { root.count }
    var count: Int { root.count }
    var isEmpty: Bool { root.count == 0 }

    /// The leaf holding position `i`, and `i` within it. Unretained on the way down: the
    /// tree keeps every node alive and cannot change during a lookup (the caller holds the
    /// mmap lock), so no reference count is touched.
    @inline(__always) private static func leaf(holding i: Int, root: Unmanaged<Node>) -> (Unmanaged<Node>, Int) {
        var node = root
        var i = i
        while true {
            let (done, next, j) = node._withUnsafeGuaranteedRef { n -> (Bool, UnsafeMutableRawPointer?, Int) in
                if n.isLeaf { return (true, nil, i) }
                let (k, j) = n.slot(for: i)
                return (false, n.refs[k], j)
            }
            if done { return (node, i) }
            node = Unmanaged<Node>.fromOpaque(next!)
            i = j
        }
    }

    subscript(i: Int) -> VMA {
        precondition(i >= 0 && i < root.count, "VMA index out of range")
        let (leaf, t) = VMATree.leaf(holding: i, root: Unmanaged.passUnretained(root))
        return leaf._withUnsafeGuaranteedRef { $0.vma(t) }
    }

    /// The bounds of the VMA at `i`, read without taking a reference.
    func bounds(at i: Int) -> (start: UInt64, end: UInt64) { VMATree.bounds(at: i, root: Unmanaged.passUnretained(root)) }

    /// Index of the first VMA whose end is above `address` (`count` if none): `find_vma`.
    func index(atOrAfter address: UInt64) -> Int {
        var node = Unmanaged.passUnretained(root)
        var base = 0
        while true {
            let (found, next) = node._withUnsafeGuaranteedRef { n -> (Int?, UnsafeMutableRawPointer?) in
                var lo = 0, hi = n.n
                if n.isLeaf {
                    while lo < hi {
                        let mid = (lo + hi) / 2
                        if n.end(ofVMA: mid) <= address { lo = mid + 1 } else { hi = mid }
                    }
                    return (base + lo, nil)
                }
                // The first child whose last VMA ends above the address (ends ascend).
                while lo < hi {
                    let mid = (lo + hi) / 2
                    if n.ends[mid] <= address { lo = mid + 1 } else { hi = mid }
                }
                guard lo < n.n else { return (base + n.count, nil) }
                for k in 0..<lo { base += n.counts[k] }
                return (nil, n.refs[lo])
            }
            if let f = found { return f }
            node = Unmanaged<Node>.fromOpaque(next!)
        }
    }

    // MARK: changes

    mutating func insert(_ vma: VMA, at i: Int) {
        precondition(i >= 0 && i <= root.count, "VMA index out of range")
        if let sibling = VMATree.insert(Unmanaged.passRetained(vma).toOpaque(), at: i, into: root) {
            let r = Node(leaf: false)
            r.refs[0] = Unmanaged.passRetained(root).toOpaque()
            r.refs[1] = Unmanaged.passRetained(sibling).toOpaque()
            r.n = 2
            r.keep(0); r.keep(1); r.summarize()
            root = r
        }
        refreshGaps(i, i + 1)
    }

    mutating func append(_ vma: VMA) { insert(vma, at: count) }

    /// Inserts a retained VMA below `node`; returns the new right sibling when the node split.
    private static func insert(_ ref: UnsafeMutableRawPointer, at i: Int, into node: Node) -> Node? {
        if node.isLeaf {
            node.open(i)
            node.refs[i] = ref
            node.gaps[i] = 0
            // A new gap of 0 leaves the largest as it was (the caller refreshes the gaps).
            node.count = node.n
            node.lastEnd = node.end(ofVMA: node.n - 1)
        } else {
            let (k, j) = node.slot(for: i, inserting: true)
            let split = Unmanaged<Node>.fromOpaque(node.refs[k])._withUnsafeGuaranteedRef { insert(ref, at: j, into: $0) }
            if let split {
                node.open(k + 1)
                node.refs[k + 1] = Unmanaged.passRetained(split).toOpaque()
                node.keep(k + 1)
                node.keep(k)
                node.summarize()
            } else {
                node.keepAndSummarize(k)
            }
        }
        guard node.n > capacity else { return nil }
        let right = Node(leaf: node.isLeaf)
        node.moveUpperHalf(from: node.n / 2, to: right)
        node.summarize(); right.summarize()
        return right
    }

    @discardableResult
    mutating func remove(at i: Int) -> VMA {
        precondition(i >= 0 && i < root.count, "VMA index out of range")
        let v = Unmanaged<VMA>.fromOpaque(VMATree.remove(at: i, from: root)).takeRetainedValue()
        // A root with one child gives way to it; an emptied inner root becomes an empty leaf.
        while !root.isLeaf && root.n == 1 { root = root.child(0) }
        if !root.isLeaf && root.n == 0 { root = Node(leaf: true) }
        refreshGaps(i - 1, i)
        return v
    }

    /// Removes position `i` below `node`; returns the VMA's reference (still retained).
    private static func remove(at i: Int, from node: Node) -> UnsafeMutableRawPointer {
        if node.isLeaf {
            let ref = node.refs[i]
            node.close(i)
            node.summarize()
            return ref
        }
        let (k, j) = node.slot(for: i)
        let child = node.child(k)
        let ref = remove(at: j, from: child)
        if child.count == 0 {
            let c = node.refs[k]
            node.close(k)
            Unmanaged<Node>.fromOpaque(c).release()
        } else {
            node.keep(k)
        }
        node.summarize()
        return ref
    }

    /// The VMA at `i` changed its bounds (or its neighbours changed): refreshes the gap before
    /// it, the gap before the next one, and the ends kept on the way to both.
    mutating func boundsChanged(at i: Int) { refreshGaps(i, i + 1) }

    /// Recomputes the gaps of positions `first...last` (those in range) and every summary on
    /// the way to them: one descent per leaf they fall in.
    private func refreshGaps(_ first: Int, _ last: Int) {
        var j = Swift.max(first, 0)
        let end = Swift.min(last, count - 1)
        let r = Unmanaged.passUnretained(root)
        while j <= end { j = VMATree.refresh(from: j, through: end, in: r, base: 0, root: r, floor: floor) }
    }

    /// `bounds(at:)` from an unretained root.
    private static func bounds(at i: Int, root: Unmanaged<Node>) -> (start: UInt64, end: UInt64) {
        let (leaf, t) = leaf(holding: i, root: root)
        return leaf._withUnsafeGuaranteedRef { ($0.start(ofVMA: t), $0.end(ofVMA: t)) }
    }

    /// Refreshes the positions from `j` through `end` that lie in the leaf holding `j`;
    /// returns the first position not done.
    private static func refresh(from j: Int, through end: Int, in unmanaged: Unmanaged<Node>, base: Int,
                                root: Unmanaged<Node>, floor: UInt64) -> Int {
        unmanaged._withUnsafeGuaranteedRef { node in
            if node.isLeaf {
                var t = j - base
                var recompute = false
                while t < node.n && base + t <= end {
                    let before = t > 0 ? node.end(ofVMA: t - 1) : (base + t > 0 ? bounds(at: base + t - 1, root: root).end : floor)
                    let prevEnd = Swift.max(floor, before)
                    let start = node.start(ofVMA: t)
                    let gap = start > prevEnd ? start - prevEnd : 0
                    if node.gaps[t] == node.maxGap && gap < node.maxGap { recompute = true }
                    node.gaps[t] = gap
                    if gap > node.maxGap { node.maxGap = gap }
                    t += 1
                }
                if recompute { node.summarize() } else { node.count = node.n; node.lastEnd = node.n > 0 ? node.end(ofVMA: node.n - 1) : 0 }
                return base + t
            }
            let (k, within) = node.slot(for: j - base)
            let next = refresh(from: j, through: end, in: Unmanaged<Node>.fromOpaque(node.refs[k]), base: j - within, root: root, floor: floor)
            node.keepAndSummarize(k)
            return next
        }
    }

    // MARK: free ranges

    /// `unmapped_area_topdown`: the highest address `a` with [a, a + length) free, at or above
    /// `floor` and with a + length at most `high`. O(log n).
    func highestFreeRange(length: UInt64, below high: UInt64) -> UInt64? {
        guard length > 0, high >= floor, high - floor >= length else { return nil }
        let k = index(atOrAfter: high)
        var limit = k                               // gaps before VMAs 0..<limit lie wholly below high
        if k < count && bounds(at: k).start < high {
            limit = k + 1                           // VMA k straddles high: its gap lies below it
        } else {
            // The gap that reaches high: from the previous VMA's end (or floor) up to high.
            let below = Swift.max(floor, k > 0 ? bounds(at: k - 1).end : floor)
            if high >= below && high - below >= length { return high - length }
        }
        guard let j = VMATree.lastGap(atLeast: length, before: limit, in: root, base: 0) else { return nil }
        return bounds(at: j).start - length
    }

    /// The largest index below `limit` whose gap is at least `length`.
    private static func lastGap(atLeast length: UInt64, before limit: Int, in node: Node, base: Int) -> Int? {
        guard node.maxGap >= length, base < limit else { return nil }
        if node.isLeaf {
            var j = Swift.min(node.n, limit - base) - 1
            while j >= 0 { if node.gaps[j] >= length { return base + j }; j -= 1 }
            return nil
        }
        var end = base + node.count
        var k = node.n - 1
        while k >= 0 {
            let childBase = end - node.counts[k]
            if childBase < limit && node.gaps[k] >= length,
               let r = Unmanaged<Node>.fromOpaque(node.refs[k])._withUnsafeGuaranteedRef({ lastGap(atLeast: length, before: limit, in: $0, base: childBase) }) {
                return r
            }
            end = childBase
            k -= 1
        }
        return nil
    }

    // MARK: iteration and checking

    struct Iterator: IteratorProtocol {
        var stack: [(Node, Int)]
        mutating func next() -> VMA? {
            while let (node, i) = stack.last {
                if i < node.n {
                    stack[stack.count - 1].1 += 1
                    if node.isLeaf { return node.vma(i) }
                    stack.append((node.child(i), 0))
                    continue
                }
                stack.removeLast()
            }
            return nil
        }
    }
    func makeIterator() -> Iterator { Iterator(stack: [(root, 0)]) }
}
#if canImport(Glibc)
import Glibc
#endif
