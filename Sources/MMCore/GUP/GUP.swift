import MMSync

/// `FOLL_*` flags of get_user_pages / pin_user_pages.
public struct FollFlags: OptionSet, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let write = FollFlags(rawValue: 0x01)
    /// A long-term pin (RDMA-like): the page must not stay in movable/device memory.
    public static let longterm = FollFlags(rawValue: 0x100)
    /// pin_user_pages (FOLL_PIN) instead of get_user_pages.
    public static let pin = FollFlags(rawValue: 0x4_0000)
    /// `FOLL_SPLIT_PMD`: a THP mapped by a PMD is split to PTEs first (the folio stays whole).
    public static let splitPMD = FollFlags(rawValue: 1 << 9)
}

/// Hook for the HMM layer: makes a page suitable for a long-term pin (migrates device-coherent
/// pages to system memory). Returns the page to pin, or nil to retry the lookup.
public protocol LongtermPinPolicy: AnyObject {
    func prepareLongtermPin(_ mm: AddressSpace, vma: VMA, address: UInt64, page: Page) -> Bool
}

extension AddressSpace {
    /// `get_user_pages` / `pin_user_pages`: faults in and references `count` pages from
    /// `address`. Device-private pages are never returned: the fault path migrates them back
    /// first. With `.pin` each page's pin count rises too (release with `unpinUserPages`);
    /// otherwise release with `putUserPages`.
    /// Errors: EINVAL (unaligned, zero count), EFAULT (no VMA, or access not allowed), ENOMEM.
    /// Pages gathered before an error are released before throwing.
    /// Locking: takes the mmap lock for read.
    public func getUserPages(_ address: UInt64, count: Int, flags: FollFlags) throws(Errno) -> [Page] {
        mmapLock.assertNotHeld()
        defer { machine.operationDone("gup") }
        return try getUserPagesLocked(address, count: count, flags: flags)
    }

    /// `__get_user_pages_locked`: takes the mmap lock for read around `__get_user_pages`.
    /// Locking: mmap lock not held on entry; held for read inside, dropped on return.
    func getUserPagesLocked(_ address: UInt64, count: Int, flags: FollFlags) throws(Errno) -> [Page] {
        mmapLock.assertNotHeld()
        mmapLock.lockRead(); defer { mmapLock.unlockRead() }
        return try getUserPagesRemote(address, count: count, flags: flags)
    }

    /// `get_user_pages_remote` / `__get_user_pages`, for a caller that already holds the mmap
    /// lock (a driver working on another process's memory): for each page, follow the page
    /// table (`follow_page_pte`) and fault it in when that fails (`faultin_page`). Pages
    /// gathered before an error are released. Errors as `getUserPages` (EINVAL for a range
    /// that is empty or wraps).
    /// Locking: caller holds the mmap lock for read.
    public func getUserPagesRemote(_ address: UInt64, count: Int, flags: FollFlags) throws(Errno) -> [Page] {
        mmapLock.assertLocked()
        guard isPageAligned(address), count > 0, UInt64(count) <= taskSize >> pageShift,
              address.addingReportingOverflow(UInt64(count) << pageShift).overflow == false else { throw .EINVAL }
        var out: [Page] = []
        out.reserveCapacity(count)
        for i in 0..<count {
            let a = address + (UInt64(i) << pageShift)
            do { out.append(try followOrFault(a, flags: flags)) } catch {
                for p in out { releaseUserPage(p, flags: flags) }
                throw error
            }
        }
        machine.stats.count(.gupPages, count)
        return out
    }

    /// One page of `__get_user_pages`: `follow_page_pte`, else `faultin_page`, until it sticks.
    /// Locking: caller holds the mmap lock for read.
    private func followOrFault(_ a: UInt64, flags: FollFlags) throws(Errno) -> Page {
        mmapLock.assertLocked()
        guard let vma = vmaLookup(a) else { throw .EFAULT }
        let write = flags.contains(.write)
        guard !vma.flags.contains(.io), !vma.flags.contains(.pfnMap) else { throw .EFAULT }
        guard write ? vma.flags.contains(.write) : vma.flags.contains(.read) else { throw .EFAULT }
        // A pin of a private anonymous page must not be shared with a COW sibling.
        let unshare = flags.contains(.pin) && !write && !vma.isShared
        for _ in 0..<1000 {
            switch followPage(a, write: write, unshare: unshare, flags: flags) {
            case .page(let p): return p
            case .migrateOut(let pfn):
                // check_and_migrate_movable_pages: a long-term pin must not hold device-coherent
                // memory; move it to system memory and look again.
                if machine.migratePages([pfn]).migrated.isEmpty { throw .EBUSY }
                continue
            case .fault: break
            }
            var ff: FaultFlags = [.remote]
            if write { ff.insert(.write) } else if unshare { ff.insert(.unshare) }
            switch handleMMFault(vma: vma, address: a, flags: ff) {
            case .ok, .retry: continue
            case .oom: throw .ENOMEM
            case .sigbus, .sigsegv: throw .EFAULT
            }
        }
        throw .EBUSY
    }

    private enum Follow { case page(Page), fault, migrateOut(UInt64) }

    /// `follow_page_pte` (and, for a PMD or PUD leaf of a hugetlb page, its huge form): the
    /// page mapped at `a` if the entry allows the access, referenced. Inside a huge page it is
    /// the base page at `a`; the reference and pin are taken on its folio (the head page).
    private func followPage(_ a: UInt64, write: Bool, unshare: Bool, flags: FollFlags) -> Follow {
        guard let found = pageTable.lookup(a, level: .pte) else { return .fault }
        if found.level == .pmd, flags.contains(.splitPMD), let vma = vmaLookup(a), !vma.isHugetlb,
           PageTable.isTHPLeaf(found.entry.load()) {
            splitHugePMD(vma, a)
            return followPage(a, write: write, unshare: unshare, flags: flags)
        }
        found.table.ptl.lock(); defer { found.table.ptl.unlock() }
        let v = found.entry.load()
        guard v.isPresent, found.level == .pte || v.isHuge, v.isUser, !write || v.isWrite else { return .fault }
        let page: Page, folio: Page
        if v.isSpecial {
            guard !write && !flags.contains(.pin) && !unshare else { return .fault }
            page = memory.zeroPage
            folio = page
        } else {
            let sub = found.level == .pte ? 0 : (a & (found.level.size - 1)) >> pageShift
            page = memory.page(v.pfn + sub)
            folio = page.folioHead   // a PTE-mapped THP's page: its folio is the head
            // The exclusive bit is the page's (PTE) or the folio head's (PMD leaf).
            let exclusive = found.level == .pte ? page.test(.anonExclusive) : folio.test(.anonExclusive)
            if unshare && folio.isAnon && !exclusive { return .fault }
        }
        if flags.contains(.longterm) && folio.isDeviceCoherent { return .migrateOut(folio.pfn) }
        if !folio.test(.reserved) { memory.get(folio) }
        if flags.contains(.pin) { folio.pincountWord.add(1); machine.stats.count(.pins) }
        return .page(page)
    }

    /// Drops what `followPage` took: on the page's folio (`gup_put_folio`).
    func releaseUserPage(_ p: Page, flags: FollFlags) {
        let folio = p.folioHead
        if flags.contains(.pin) { folio.pincountWord.add(-1) }
        memory.put(folio)
    }

    /// `unpin_user_pages`.
    public func unpinUserPages(_ pages: [Page]) { for p in pages { releaseUserPage(p, flags: .pin) } }
    /// `put_page` for pages from `getUserPages` without `.pin`.
    public func putUserPages(_ pages: [Page]) { for p in pages { releaseUserPage(p, flags: []) } }
}
