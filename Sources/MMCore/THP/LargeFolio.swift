import MMSync

/// Large anonymous folios (THP): a head page of order 9 and its tail pages, 64 B of metadata
/// each as every frame. The folio's reference count, pin count, lock and owner are the head's;
/// each page keeps its own PTE mapcount and anon-exclusive bit; the number of PMD mappings of
/// the whole folio (`_entire_mapcount`) lives in the first tail page's pin-count word, which a
/// tail does not otherwise use (pins are the folio's, on its head), as the kernel keeps folio
/// fields in its first tails. (Not its reference-count word: code that reads a page's own
/// count must find 0 in every tail.) Every mapping of any of its pages, by PMD or by PTE
/// (`_large_mapcount`), is counted once more in the first tail's page-table-lock word, which
/// only a page-table page uses (its allocation clears it), so that `folio_mapcount` and
/// `folio_mapped` read one word, as in 7.2, instead of 512.
extension Page {
    /// `folio->_entire_mapcount` of a large folio's head: its PMD mappings.
    @inlinable public var entireMapcountWord: AtomicI32Ref { AtomicI32Ref(meta + Page.metadataStride + 16) }
    /// PMD mappings of the folio this head page starts (0 for a small or hugetlb folio, whose
    /// mappings are counted in `mapcount`).
    public var entireMapcount: Int32 { test(.head) && !test(.hugetlb) ? entireMapcountWord.load() : 0 }
    /// `folio->_large_mapcount` of a large folio's head: its PMD mappings plus every PTE
    /// mapping of its pages. Written after a page's own count when a mapping is added and
    /// before it when one is removed (`__folio_add_rmap`, `__folio_remove_rmap`), so it may lag
    /// behind the pages' counts for a moment, never count a mapping they have not.
    @inlinable public var largeMapcountWord: AtomicI32Ref { AtomicI32Ref(meta + Page.metadataStride + 24) }
    /// A head or tail of any large folio, THP or hugetlb (`PageCompound`), read relaxed: the
    /// cheap first test on paths that mostly see small pages, before `isInLargeFolio`.
    @inlinable public var isCompound: Bool {
        flagsWord.load(.relaxed) & (PageFlags.head.rawValue | PageFlags.tail.rawValue) != 0
    }
    /// A transparent huge page's head or tail (`folio_test_large`, hugetlb excluded).
    @inlinable public var isInLargeFolio: Bool {
        let f = flagsWord.load(.acquire)
        if f & PageFlags.tail.rawValue != 0 { return !folioHead.test(.hugetlb) }
        return f & PageFlags.head.rawValue != 0 && f & PageFlags.hugetlb.rawValue == 0
    }
    /// The page's mappings (`page_mapcount`): by PTE, plus its folio's PMD mappings.
    public var totalMapcount: Int32 {
        let h = folioHead
        return mapcount + (h.test(.hugetlb) ? 0 : h.entireMapcount)
    }
    /// The mappings of the folio this head starts (`folio_mapcount`): its PMD mappings plus
    /// every page's PTE mappings, which a THP keeps in one word (`folio_large_mapcount`); a
    /// small or hugetlb folio's are its head's count.
    public var folioMapcount: Int32 {
        let f = flagsWord.load(.acquire)
        guard f & PageFlags.head.rawValue != 0, f & PageFlags.hugetlb.rawValue == 0 else { return mapcount }
        return largeMapcountWord.load()
    }
    /// Whether any page of the folio this head starts is mapped (`folio_mapped`).
    public var folioMapped: Bool { folioMapcount > 0 }
    /// The same sum counted page by page (what `folioMapcount` keeps in one word), for the
    /// invariant checks.
    var folioMapcountByPage: Int32 {
        guard test(.head), !test(.hugetlb) else { return mapcount }
        var n = entireMapcount
        for i in 0..<folioPages { n += Page(pfn: pfn + i, meta: meta + Int(i) &* Page.metadataStride).mapcount }
        return n
    }
}

extension PhysicalMemory {
    /// `folio_add_new_anon_rmap(folio, vma, haddr, RMAP_EXCLUSIVE)` for a new PMD-mapped folio:
    /// every page gets the owner and its linear index, the folio is exclusive, mapped once by
    /// the PMD. The allocation reference becomes the mapping's.
    /// Locking: the folio is not yet visible to others.
    package func addNewAnonRmapPMD(_ folio: Page, vma: VMA, address haddr: UInt64, anonVMA: Unmanaged<AnonVMA>) {
        assert(folio.test(.head) && folio.order == pmdOrder && folio.entireMapcount == 0 && folio.largeMapcountWord.load() == 0 && !folio.isAnon,
               "addNewAnonRmapPMD: not a new order-9 folio")
        let bits = UInt64(UInt(bitPattern: anonVMA.toOpaque())) | Page.ownerTagAnon
        let index = vma.linearPageIndex(haddr)
        for i in 1..<folio.folioPages {
            let t = page(folio.pfn + i)
            t.index = index + i
            t.ownerBits = bits
        }
        folio.index = index
        folio.set([.anon, .anonExclusive, .swapBacked, .uptodate, .dirty])
        folio.entireMapcountWord.store(1)
        folio.largeMapcountWord.store(1)
        folio.ownerBits = bits
    }

    /// Undoes `addNewAnonRmapPMD` on a folio whose entry could not be installed (no one saw
    /// it mapped). Locking: as `addNewAnonRmapPMD` (the folio is still its caller's alone).
    package func undoNewAnonRmapPMD(_ folio: Page) {
        assert(folio.entireMapcount == 1 && folio.largeMapcountWord.load() == 1,
               "undoNewAnonRmapPMD: \(folio) was mapped by someone else meanwhile")
        folio.entireMapcountWord.store(0)
        folio.largeMapcountWord.store(0)
    }

    /// `folio_add_anon_rmap_pmd`: one more PMD mapping of the folio (fork). The caller took
    /// the mapping's reference. Locking: the PMD's lock.
    package func addRmapPMD(_ folio: Page) {
        folio.entireMapcountWord.add(1)
        folio.largeMapcountWord.add(1)
    }

    /// `folio_remove_rmap_pmd`: one PMD mapping fewer; the reference is dropped by the caller
    /// after the TLB flush. Locking: the PMD's lock.
    package func removeRmapPMD(_ folio: Page) {
        let mappings = folio.largeMapcountWord.add(-1)
        let n = folio.entireMapcountWord.add(-1)
        precondition(n >= 0 && mappings >= 0, "entire or large mapcount underflow on \(folio)")
        if mappings == 0 && folio.isAnon { folio.holdAnonVMA() }
    }
}
