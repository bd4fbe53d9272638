import MMSync

extension AddressSpace {
    /// `do_anonymous_page`: a read maps the shared zero page read-only; a write maps a new
    /// zeroed page, exclusive and writable. The page is allocated before the PTE lock is taken
    /// and the entry re-checked under it. `realAddress` is the faulting byte (`vmf->real_address`;
    /// `address` is its page): the new page's line holding it is zeroed last, into the cache.
    func doAnonymousPage(_ vma: VMA, _ address: UInt64, _ ptep: EntryPointer, _ ptl: SpinLockRef,
                         flags: FaultFlags, realAddress: UInt64) -> FaultResult {
        if !flags.contains(.write) {
            ptl.lock(); defer { ptl.unlock() }
            guard ptep.load().isNone else { return .retry }
            ptep.store(.page(PhysicalMemory.zeroPfn, write: false, special: true))
            stats.count(.faultAnonZeroPage)
            return .ok
        }
        guard let av = vmfAnonPrepare(vma, flags) else { return .retry }
        // On the LRU from its allocation, before the entry is published (folio_add_lru_vma):
        // once mapped, another thread may zap and free it at once.
        guard let page = memory.allocate(order: 0, mayReclaim: true, lru: true) else { return .oom }
        memory.clearUserPage(page, address: realAddress)
        ptl.lock()
        guard ptep.load().isNone else {
            ptl.unlock()
            memory.put(page)
            return .retry
        }
        memory.addNewAnonRmap(page, vma: vma, address: address, anonVMA: av)
        ptep.store(.page(page.pfn, write: vma.flags.contains(.write), dirty: true))
        ptl.unlock()
        stats.count(.faultAnonNewPage)
        return .ok
    }

    /// `do_wp_page`: a write to a present read-only entry. Shared mappings just become
    /// writable; private ones reuse an exclusive anonymous page or copy (COW).
    /// Locking: called with the PTE lock held; returns with it released.
    func doWPPage(_ vma: VMA, _ address: UInt64, _ ptep: EntryPointer, _ ptl: SpinLockRef, _ old: PTE,
                  flags: FaultFlags, realAddress: UInt64) -> FaultResult {
        ptl.assertHeld()
        if vma.isShared {
            ptep.store(old.mkwrite().mkdirty().mkyoung())
            if !old.isSpecial { memory.page(old.pfn).set(.dirty) }
            ptl.unlock()
            stats.count(.faultWriteShared)
            return .ok
        }
        if !old.isSpecial {
            let page = memory.page(old.pfn)
            if page.isAnon && canReuseAnonPage(page) {
                // wp_page_reuse: the page is ours alone. An unshare request keeps it read-only.
                if flags.contains(.write) { ptep.store(old.mkwrite().mkdirty().mkyoung()) }
                ptl.unlock()
                stats.count(.faultCOWReuse)
                return .ok
            }
            memory.get(page) // keep the source alive while copying without the lock
        }
        ptl.unlock()
        return wpPageCopy(vma, address, ptep, ptl, old, flags: flags, realAddress: realAddress)
    }

    /// Whether a private anonymous page may be reused by a write fault. Locking: PTE lock.
    func canReuseAnonPage(_ page: Page) -> Bool {
        Lockdep.assertSpinLockHeld()
        if page.test(.anonExclusive) { return true }
        // A page of a PTE-mapped THP that is not exclusive: 7.2 copies when at most one page
        // of the folio is mapped (to free the large folio) and reuses when every reference is
        // a mapping in this mm, which needs per-folio mm ids the model does not keep: it
        // copies (D16).
        if page.test(.tail) || page.test(.head) { return false }
        // wp_can_reuse_anon_folio: a page the swap cache holds too leaves it first when no
        // swap entry names its slot any more (folio_free_swap, under a trylock).
        if page.test(.swapCache), page.refcount == 2, page.mapcount == 1, page.tryLock() {
            _ = memory.withSwap { $0.folioFreeSwap(page) }
            page.unlock()
        }
        // The only reference is this one mapping: nobody else can see the page.
        if page.refcount == 1 && page.mapcount == 1 {
            page.set(.anonExclusive)
            return true
        }
        return false
    }

    /// `wp_page_copy`: copies the old page (or zeroes, for the zero page) into a new anonymous
    /// page and swaps it in. Locking: no lock held on entry; the caller holds a reference on the
    /// old page (if it is not the zero page), which this drops.
    func wpPageCopy(_ vma: VMA, _ address: UInt64, _ ptep: EntryPointer, _ ptl: SpinLockRef, _ old: PTE,
                    flags: FaultFlags, realAddress: UInt64) -> FaultResult {
        Lockdep.assertNoSpinLockHeld()
        let oldPage: Page? = old.isSpecial ? nil : memory.page(old.pfn)
        defer { if let p = oldPage { memory.put(p) } }
        guard let av = vmfAnonPrepare(vma, flags) else { return .retry }
        guard let new = memory.allocate(order: 0, mayReclaim: true, lru: true) else { return .oom }
        if let src = oldPage {
            memory.copyUserPage(to: new, from: src, address: realAddress)
            stats.count(.bytesCopied, Int(pageSize))
        } else {
            memory.clearUserPage(new, address: realAddress)
        }
        // Mirrors must drop the old page (or the zero page) before the new one is mapped.
        let range = MMUNotifierRange(start: address, end: address + pageSize, event: .clear)
        notifiers.invalidateRangeStart(range)
        defer { notifiers.invalidateRangeEnd(range) }
        ptl.lock()
        let now = ptep.load()
        guard now.isPresent, now.pfn == old.pfn, !now.isWrite else {
            ptl.unlock()
            memory.put(new)
            return .retry
        }
        memory.addNewAnonRmap(new, vma: vma, address: address, anonVMA: av)
        ptep.store(.page(new.pfn, write: vma.flags.contains(.write), dirty: true))
        // ptep_clear_flush: no CPU may keep using the old frame once the new one is visible.
        flushTLB()
        if let src = oldPage { memory.removeRmap(src) }
        ptl.unlock()
        if let src = oldPage { memory.put(src) } // the mapping's reference
        stats.count(.faultCOWCopy)
        return .ok
    }
}
