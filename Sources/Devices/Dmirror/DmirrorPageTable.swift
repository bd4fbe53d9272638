#if canImport(Glibc)
import Glibc
#endif
import MMCore

/// The device page table of one mirror (the kernel driver's `xarray pt`): virtual page number →
/// entry (`pfn << 2 | tag`). A two-level radix table: 512-entry leaves (one per CPU page
/// table's worth of address space) found through a dictionary keyed by `vpn >> 9`, with the
/// last leaf cached, so a batch of consecutive pages costs one hash lookup, not one per page.
///
/// Locking: the owning mirror's `mutex` (the table itself is not thread-safe).
final class DmirrorPageTable {
    static let leafShift: UInt64 = 9
    static let leafEntries = 1 << 9
    /// Stored entries carry this bit, so entry 0 (the zero page, read-only) is not "none".
    static let present: UInt64 = 1 << 63

    /// A leaf: 512 entries, then the count of entries in use (slot 512). Raw memory, so a
    /// lookup costs no reference counting.
    private typealias Leaf = UnsafeMutablePointer<UInt64>
    private static func makeLeaf() -> Leaf {
        let l = Leaf.allocate(capacity: leafEntries + 1)
        l.initialize(repeating: 0, count: leafEntries + 1)
        return l
    }

    @exclusivity(unchecked) private var leaves: [UInt64: Leaf] = [:]
    @exclusivity(unchecked) private var lastKey: UInt64 = .max
    @exclusivity(unchecked) private var lastLeaf: Leaf?
    /// Entries present.
    private(set) var count = 0

    var isEmpty: Bool { count == 0 }

    deinit { for l in leaves.values { l.deallocate() } }

    private func leaf(_ key: UInt64, create: Bool) -> Leaf? {
        if key == lastKey, let l = lastLeaf { return l }
        var l = leaves[key]
        if l == nil && create {
            let fresh = DmirrorPageTable.makeLeaf()
            leaves[key] = fresh
            l = fresh
        }
        if let l { lastKey = key; lastLeaf = l }
        return l
    }

    /// The entry of `vpn`, or nil; setting nil erases it.
    subscript(vpn: UInt64) -> UInt64? {
        get {
            guard let l = leaf(vpn >> DmirrorPageTable.leafShift, create: false) else { return nil }
            let v = l[Int(vpn & 511)]
            return v == 0 ? nil : v & ~DmirrorPageTable.present
        }
        set {
            let key = vpn >> DmirrorPageTable.leafShift
            guard let l = leaf(key, create: newValue != nil) else { return }
            let slot = l + Int(vpn & 511)
            let had = slot.pointee != 0
            if let v = newValue {
                slot.pointee = v | DmirrorPageTable.present
                if !had { l[512] += 1; count += 1 }
            } else if had {
                slot.pointee = 0
                l[512] -= 1; count -= 1
                if l[512] == 0 { dropLeaf(key) }
            }
        }
    }

    private func dropLeaf(_ key: UInt64) {
        leaves.removeValue(forKey: key)?.deallocate()
        if lastKey == key { lastKey = .max; lastLeaf = nil }
    }

    /// The keys of existing leaves in `k0...k1`: found from the leaves or from the range,
    /// whichever is fewer (an invalidation of the whole space visits only what exists).
    private func leafKeys(_ k0: UInt64, _ k1: UInt64) -> [UInt64] {
        UInt64(leaves.count) <= k1 - k0 ? leaves.keys.filter { $0 >= k0 && $0 <= k1 } : (k0...k1).filter { leaves[$0] != nil }
    }

    /// Erases every entry of vpns `first...last` (inclusive).
    func removeRange(_ first: UInt64, _ last: UInt64) {
        guard count > 0, first <= last else { return }
        let k0 = first >> DmirrorPageTable.leafShift, k1 = last >> DmirrorPageTable.leafShift
        for key in leafKeys(k0, k1) {
            guard let l = leaves[key] else { continue }
            let base = key << DmirrorPageTable.leafShift
            let lo = key == k0 ? Int(first - base) : 0
            let hi = key == k1 ? Int(last - base) : DmirrorPageTable.leafEntries - 1
            for i in lo...hi where l[i] != 0 {
                l[i] = 0
                l[512] -= 1; count -= 1
            }
            if l[512] == 0 { dropLeaf(key) }
        }
    }

    func removeAll() {
        for l in leaves.values { l.deallocate() }
        leaves.removeAll()
        lastKey = .max; lastLeaf = nil
        count = 0
    }

    /// Whether every vpn of `first ..< end` has an entry.
    func allPresent(_ first: UInt64, _ end: UInt64) -> Bool {
        var v = first
        while v < end {
            guard let l = leaf(v >> DmirrorPageTable.leafShift, create: false) else { return false }
            let stop = min(end, (v | 511) + 1)
            while v < stop { if l[Int(v & 511)] == 0 { return false }; v += 1 }
        }
        return true
    }

    /// Whether some entry of `first ..< end` has `tag`.
    func contains(tag: UInt64, in first: UInt64, _ end: UInt64) -> Bool {
        guard end > first, count > 0 else { return false }
        let k0 = first >> DmirrorPageTable.leafShift, k1 = (end - 1) >> DmirrorPageTable.leafShift
        for key in leafKeys(k0, k1) {
            let l = leaves[key]!, base = key << DmirrorPageTable.leafShift
            let lo = key == k0 ? Int(first - base) : 0
            let hi = key == k1 ? Int(end - 1 - base) : DmirrorPageTable.leafEntries - 1
            for i in lo...hi where l[i] != 0 && (l[i] & ~DmirrorPageTable.present) & 3 == tag { return true }
        }
        return false
    }

    /// Every entry, by increasing vpn.
    func entries() -> [(vpn: UInt64, entry: UInt64)] {
        var out: [(vpn: UInt64, entry: UInt64)] = []
        out.reserveCapacity(count)
        for key in leaves.keys.sorted() {
            let l = leaves[key]!
            for i in 0..<DmirrorPageTable.leafEntries where l[i] != 0 {
                out.append(((key << DmirrorPageTable.leafShift) | UInt64(i), l[i] & ~DmirrorPageTable.present))
            }
        }
        return out
    }
}
