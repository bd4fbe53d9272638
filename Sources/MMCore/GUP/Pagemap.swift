import MMSync

/// One `/proc/PID/pagemap` entry.
public struct PagemapEntry: Equatable, Sendable, CustomStringConvertible {
    public let raw: UInt64
    public static let presentBit: UInt64 = 1 << 63
    public static let swapBit: UInt64 = 1 << 62
    public static let fileBit: UInt64 = 1 << 61
    public static let exclusiveBit: UInt64 = 1 << 56
    public static let softDirtyBit: UInt64 = 1 << 55
    public var isPresent: Bool { raw & PagemapEntry.presentBit != 0 }
    public var isSwap: Bool { raw & PagemapEntry.swapBit != 0 }
    public var isFileOrSharedAnon: Bool { raw & PagemapEntry.fileBit != 0 }
    public var isSoftDirty: Bool { raw & PagemapEntry.softDirtyBit != 0 }
    public var isExclusive: Bool { raw & PagemapEntry.exclusiveBit != 0 }
    /// Bits 0–54: the pfn when present; swap type (bits 0–4) and offset (5–54) when swapped.
    public var pfn: UInt64 { raw & ((1 << 55) - 1) }
    public var description: String {
        "pagemap(present: \(isPresent), swap: \(isSwap), pfn/swp: \(pfn))"
    }
}

extension AddressSpace {
    /// The pagemap entries of `count` pages from `address` (`pagemap_read`). Unmapped and
    /// empty pages read as 0. EINVAL for an unaligned address.
    /// Locking: takes the mmap lock for read.
    public func pagemap(_ address: UInt64, count: Int) throws(Errno) -> [PagemapEntry] {
        guard isPageAligned(address), count >= 0 else { throw .EINVAL }
        mmapLock.lockRead(); defer { mmapLock.unlockRead() }
        var out: [PagemapEntry] = []
        out.reserveCapacity(count)
        for i in 0..<count {
            let a = address &+ (UInt64(i) << pageShift)
            var raw: UInt64 = 0
            if a < taskSize, vmaLookup(a) != nil, let f = pageTable.lookup(a, level: .pte) {
                let v = f.entry.load()
                let sub = f.level == .pte ? 0 : (a & (f.level.size - 1)) >> pageShift
                if v.isPresent && (f.level == .pte || v.isHuge) {
                    raw = PagemapEntry.presentBit | ((v.pfn + sub) & ((1 << 55) - 1))
                    if v.isSoftDirty { raw |= PagemapEntry.softDirtyBit }
                    if !v.isSpecial {
                        let p = memory.page(v.pfn)
                        if !p.isAnon { raw |= PagemapEntry.fileBit }
                        if p.mapcount == 1 { raw |= PagemapEntry.exclusiveBit }
                    }
                } else if v.isSwap {
                    let s = v.swapEntry
                    let off = s.hasPfn ? s.offset + sub : s.offset
                    raw = PagemapEntry.swapBit | UInt64(s.type) | (off << 5) & ((1 << 55) - 1)
                    if v.isSoftDirty { raw |= PagemapEntry.softDirtyBit }
                }
            }
            out.append(PagemapEntry(raw: raw))
        }
        return out
    }
}
