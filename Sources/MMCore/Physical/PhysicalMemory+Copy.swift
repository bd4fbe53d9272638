import MMArch

/// Bulk page copies, as a device's copy engine makes them: non-temporal stores (the data
/// streams through memory instead of evicting the caches, and no destination line is read
/// first), one store fence per batch. The batch is complete when the call returns.
/// pfn 0 is the zero page, so copying from it zero-fills.
extension PhysicalMemory {
    /// Frame `dst[i]` ← frame `src[i]`. Precondition: equal counts, valid pfns.
    public func copyFramesBulk(to dst: [UInt64], from src: [UInt64]) {
        precondition(dst.count == src.count && dst.allSatisfy { $0 < totalPfns } && src.allSatisfy { $0 < totalPfns })
        dst.withUnsafeBufferPointer { d in
            src.withUnsafeBufferPointer { s in mm_copy_frames_nocache(frameBase, d.baseAddress, s.baseAddress, d.count) }
        }
    }

    /// Page `i` of `buffer` ← frame `src[i]`. Precondition: the buffer holds `src.count` pages.
    public func gatherFramesBulk(into buffer: UnsafeMutableRawBufferPointer, from src: [UInt64]) {
        precondition(buffer.count >= src.count << pageShift && src.allSatisfy { $0 < totalPfns })
        src.withUnsafeBufferPointer { s in mm_gather_frames_nocache(buffer.baseAddress, frameBase, s.baseAddress, s.count) }
    }

    /// Frame `dst[i]` ← page `i` of `buffer`. Precondition: the buffer holds `dst.count` pages.
    public func scatterFramesBulk(to dst: [UInt64], from buffer: UnsafeRawBufferPointer) {
        precondition(buffer.count >= dst.count << pageShift && dst.allSatisfy { $0 < totalPfns })
        dst.withUnsafeBufferPointer { d in mm_scatter_frames_nocache(frameBase, d.baseAddress, buffer.baseAddress, d.count) }
    }
}

/// The CPU's page clear and copy (`clear_page`, `copy_page`) for faults: a new anonymous page is
/// zeroed, a copy-on-write copy made, with non-temporal stores, since the frame is almost
/// always cold: streaming skips reading the old lines, which on a cold page is half the
/// traffic. Each call ends with a store fence, so the contents are visible before the entry
/// that maps the frame is published.
extension PhysicalMemory {
    /// Zeroes the 2^order frames starting at `pfn` (`clear_page`).
    @inline(__always) func clearFrames(_ pfn: UInt64, order: Int = 0) {
        clearFrames(pfn, count: 1 << UInt64(order))
    }

    /// Zeroes the `count` frames starting at `pfn` (nothing when `count` is 0).
    @inline(__always) func clearFrames(_ pfn: UInt64, count: UInt64) {
        if count > 0 { mm_clear_pages_nocache(frame(pfn), Int(count)) }
    }

    /// Zeroes `page` for a user fault at `address` (`folio_zero_user`): the line at `address`
    /// is cleared last and stays in the cache for the access that faulted.
    @inline(__always) func clearUserPage(_ page: Page, address: UInt64) {
        mm_clear_user_page(frame(page.pfn), UInt(address & (pageSize - 1)))
    }

    /// Frame `dst` ← frame `src` for a user fault at `address` (`copy_user_highpage`), the
    /// line at `address` copied last and left in the cache.
    @inline(__always) func copyUserPage(to dst: Page, from src: Page, address: UInt64) {
        mm_copy_user_page(frame(dst.pfn), frame(src.pfn), UInt(address & (pageSize - 1)))
    }

    /// Turns the 32-byte streaming stores off or back on for the whole process (tests of the
    /// 16-byte path). Returns whether the CPU has them.
    @discardableResult static func setWideStores(_ on: Bool) -> Bool { mm_set_wide_stores(on ? 1 : 0) != 0 }

    /// Frame `dst` ← frame `src` (`copy_page`).
    @inline(__always) public func copyPage(to dst: Page, from src: Page) {
        mm_copy_page_nocache(frame(dst.pfn), frame(src.pfn))
    }
}
