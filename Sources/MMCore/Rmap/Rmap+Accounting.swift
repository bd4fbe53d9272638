import MMSync

extension PhysicalMemory {
    /// `folio_add_new_anon_rmap`: a freshly allocated page becomes the anonymous page at
    /// `address` of `vma`, mapped once and exclusive. The caller's allocation reference becomes
    /// the mapping's reference. Locking: page not yet visible to others.
    /// The anon_vma is passed without a reference (the VMA's chain holds one).
    package func addNewAnonRmap(_ page: Page, vma: VMA, address: UInt64, anonVMA: Unmanaged<AnonVMA>) {
        assert(page.mapcount == 0 && !page.isAnon, "addNewAnonRmap: the page is already mapped or anonymous")
        // A pfn walker may already hold a reference and try the page lock: the flags are set
        // with a read-modify-write, and the owner is published last, so that until then the
        // page does not look anonymous (a walker skips it).
        page.index = vma.linearPageIndex(address)
        page.set([.anon, .anonExclusive, .swapBacked, .uptodate, .dirty])
        page.mapcountWord.store(1)
        page.ownerBits = UInt64(UInt(bitPattern: anonVMA.toOpaque())) | Page.ownerTagAnon
    }

    /// `folio_add_anon_rmap` / `folio_add_file_rmap`: one more mapping of an existing page
    /// (and of its THP: the page's count first, then the folio's). The caller has taken the
    /// reference the mapping holds. Locking: PTE lock of the entry.
    @inlinable @inline(__always) package func addRmap(_ page: Page) {
        page.mapcountWord.add(1)
        // A small page (the fork of 1 GiB maps 262,144 of them) pays one flag test here.
        if _slowPath(page.isCompound) { addLargeRmap(page) }
    }

    /// The folio's count of a THP page's new mapping (not for a hugetlb folio, whose
    /// mappings are its head's count).
    @usableFromInline @inline(never) func addLargeRmap(_ page: Page) {
        if page.isInLargeFolio { page.folioHead.largeMapcountWord.add(1) }
    }

    /// `folio_remove_rmap_pte`: one mapping fewer (of its THP first, then of the page). The
    /// mapping's reference is dropped separately, after the TLB flush. Locking: PTE lock of
    /// the entry being cleared.
    package func removeRmap(_ page: Page, holdOwner: Bool = true) {
        if _slowPath(page.isCompound), page.isInLargeFolio {
            let left = page.folioHead.largeMapcountWord.add(-1)
            precondition(left >= 0, "large mapcount underflow on \(page.folioHead)")
        }
        let n = page.mapcountWord.add(-1)
        precondition(n >= 0, "mapcount underflow on \(page)")
        // The last mapping: the page may outlive the VMAs that kept its anon_vma alive (a pfn
        // walker may take a reference on it right after this), so it holds the anon_vma now.
        // (A page of a large folio: the folio holds it, through its head.)
        if n == 0 && page.isAnon && holdOwner { page.folioHead.holdAnonVMA() }
    }
}

/// Pages whose mapping references are dropped only after the TLB shootdown (`mmu_gather`).
struct TLBGather {
    var pages: [Page] = []
    /// Deposited PTE tables of zapped THP leaves, freed after the flush (`pte_free`).
    var tables: [Page] = []
    var needsFlush = false
    mutating func add(_ p: Page) { pages.append(p); needsFlush = true }
    /// Flushes the TLB if any entry changed, then drops the gathered references
    /// (`free_pages_and_swap_cache`): a swap-cache page that nothing maps any more leaves the
    /// swap cache first if no swap PTE names its slot and its lock is free (`free_swap_cache`),
    /// so the last unmap of a swapped-in page frees both the page and its slot.
    mutating func finish(_ mm: AddressSpace) {
        if needsFlush { mm.flushTLB() }
        for p in pages {
            if p.test(.swapCache) && p.mapcount == 0 && p.tryLock() {
                mm.memory.swap.folioFreeSwap(p)
                p.unlock()
            }
            mm.memory.put(p)
        }
        for t in tables { mm.pageTable.freeTable(t) }
        pages.removeAll(); tables.removeAll(); needsFlush = false
    }
}
