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
    /// A swapped entry's swap type (a device-exclusive entry's is `SwapEntry.deviceExclusive`).
    public var swapType: UInt8 { UInt8(raw & 0x1F) }
    /// A swapped entry's offset: the pfn for the entries that name a page.
    public var swapOffset: UInt64 { pfn >> 5 }
    public var description: String {
        "pagemap(present: \(isPresent), swap: \(isSwap), pfn/swp: \(pfn))"
    }
}

extension AddressSpace {
    /// The pagemap entries of `count` pages from `address` (`pagemap_read`, Linux 7.2's
    /// `pte_to_pagemap_entry`). Pages outside every VMA read as 0; empty pages inside one as
    /// soft-dirty only. EINVAL for an unaligned address.
    /// Locking: takes the mmap lock for read, and each entry's page-table lock.
    public func pagemap(_ address: UInt64, count: Int) throws(Errno) -> [PagemapEntry] {
        mmapLock.assertNotHeld()
        guard isPageAligned(address), count >= 0 else { throw .EINVAL }
        mmapLock.lockRead(); defer { mmapLock.unlockRead() }
        var out: [PagemapEntry] = []
        out.reserveCapacity(min(count, 1 << 16))
        for i in 0..<count {
            let a = address &+ (UInt64(i) << pageShift)
            var raw: UInt64 = 0
            if a < taskSize, vmaLookup(a) != nil {
                // Every VMA carries VM_SOFTDIRTY (nothing clears it: no clear_refs), so every
                // page inside one reads soft-dirty, as pte_to_pagemap_entry reports it.
                raw = PagemapEntry.softDirtyBit
                if let f = pageTable.lookup(a, level: .pte) {
                    // Under the table's lock, as pagemap_pmd_range reads: never an entry in the
                    // middle of a change (cleared before it is replaced, as make_device_exclusive
                    // and migration do).
                    f.table.ptl.lock(); defer { f.table.ptl.unlock() }
                    let v = f.entry.load()
                    let sub = f.level == .pte ? 0 : (a & (f.level.size - 1)) >> pageShift
                    if v.isPresent && (f.level == .pte || v.isHuge) {
                        raw |= PagemapEntry.presentBit | ((v.pfn + sub) & ((1 << 55) - 1))
                        if !v.isSpecial {
                            // The page's own mappings, its folio's PMD mappings included.
                            let p = memory.page(v.pfn + sub)
                            if !p.folioHead.isAnon { raw |= PagemapEntry.fileBit }
                            if p.totalMapcount == 1 { raw |= PagemapEntry.exclusiveBit }
                        } else if f.level == .pmd {
                            raw |= PagemapEntry.fileBit   // the huge zero folio: pmd_page, not anonymous
                        }
                    } else if v.isSwap {
                        let s = v.swapEntry
                        let off = s.hasPfn ? s.pfn + sub : s.offset
                        raw |= PagemapEntry.swapBit | UInt64(s.type) | (off << 5) & ((1 << 55) - 1)
                        if s.hasPfn && !memory.page(s.pfn).isAnon { raw |= PagemapEntry.fileBit }
                    }
                }
            }
            out.append(PagemapEntry(raw: raw))
        }
        return out
    }
}

extension AddressSpace {
    /// `mincore(2)` as Linux 7.2 does it: one byte per page of [address, address + length),
    /// 1 if the page is resident. A present PTE is resident; a migration, device-private or
    /// device-exclusive entry too (they are not swap); an empty PTE of a file or shmem mapping
    /// is resident if the page cache holds the page, of an anonymous mapping not.
    /// Errors: EINVAL for an unaligned address, ENOMEM if the range leaves the user address
    /// space or any part of it is not mapped. Zero length succeeds with no bytes.
    /// Locking: takes the mmap lock for read.
    public func mincore(_ address: UInt64, length: UInt64) throws(Errno) -> [UInt8] {
        mmapLock.assertNotHeld()
        guard isPageAligned(address) else { throw .EINVAL }
        let (end, overflow) = address.addingReportingOverflow(length)
        guard !overflow, end <= taskSize + pageSize else { throw .ENOMEM }
        let pages = Int((length + pageSize - 1) >> pageShift)
        mmapLock.lockRead(); defer { mmapLock.unlockRead() }
        var out: [UInt8] = []   // grows with what is mapped: no up-front allocation for a huge length
        var a = address
        while out.count < pages {
            guard let vma = vmaLookup(a) else { throw .ENOMEM }
            while out.count < pages && a < vma.end {
                var resident: UInt8 = 0
                if let f = pageTable.lookup(a, level: .pte), !f.entry.load().isNone {
                    resident = 1 // present, or a non-swap entry (there is no swap yet)
                } else if let file = vma.file {
                    resident = file.isCached(vma.linearPageIndex(a)) ? 1 : 0
                }
                out.append(resident)
                a += pageSize
            }
        }
        return out
    }
}
