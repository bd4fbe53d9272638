import MMSync

extension PhysicalMemory {
    /// Every THP in system memory is whole, never half-split: its head is of order 9 and not
    /// free; every tail points at it, is no head itself, has order 0 and (for an anonymous
    /// folio) the head's owner and the next linear index; no page of a free folio is mapped;
    /// the folio's mapcount (`_large_mapcount`) is its PMD mappings plus its pages' PTE
    /// mappings (device folios too).
    /// Only after the first THP was made (a scan of every frame otherwise costs every check).
    /// Contract not checkable here: it takes no lock and must run while no other thread
    /// changes memory.
    public func checkLargeFolios() -> [String] {
        guard thp.foliosMade else { return [] }
        var problems: [String] = []
        var pfn: UInt64 = 1
        while pfn < systemFrames {
            let h = page(pfn)
            guard h.test(.head), !h.test(.hugetlb), !h.test(.buddy) else { pfn += 1; continue }
            let n = h.folioPages
            if h.order != pmdOrder { problems.append("large folio \(h) has order \(h.order)") }
            if h.refcount <= 0 { problems.append("large folio \(h) has reference count \(h.refcount)") }
            if h.largeMapcountWord.load() != h.folioMapcountByPage {
                problems.append("large folio \(h): folio mapcount \(h.largeMapcountWord.load()) but its PMD and PTE mappings count \(h.folioMapcountByPage)")
            }
            for i in 1..<n where pfn + i < systemFrames {
                let t = page(pfn + i)
                if !t.test(.tail) || t.test(.head) || t.privateWord != pfn || t.order != 0 {
                    problems.append("large folio \(h): page \(t.pfn) is not its tail (half-split?)"); break
                }
                if h.isAnon && (t.ownerBits & ~Page.ownerTagMask != h.ownerBits & ~Page.ownerTagMask || t.index != h.index + i) {
                    problems.append("large folio \(h): tail \(t.pfn) has another owner or index"); break
                }
            }
            pfn += n
        }
        for g in livePagemaps() { problems += checkDeviceFolios(g) }
        return problems
    }

    /// Large device folios (device THP): a head of order 9, aligned, whose tails name it and
    /// are of its kind. A free one (reference count 0) stays whole: its driver recycles it.
    /// Device folios are 2 MiB-aligned, so only each 2 MiB's first two pages are looked at
    /// unless a head is found (a tail at +1 with no head at +0 is a half-split folio).
    private func checkDeviceFolios(_ g: DevicePagemap) -> [String] {
        var problems: [String] = []
        let n = UInt64(1) << pmdOrder
        var pfn = g.startPfn
        let end = g.startPfn + g.pageCount
        while pfn + n <= end {
            defer { pfn += n }
            let h = page(pfn)
            guard h.test(.head) else {
                if page(pfn + 1).test(.tail) { problems.append("device page \(pfn + 1) is a tail with no head at \(pfn) (half-split?)") }
                continue
            }
            if h.order != pmdOrder { problems.append("device folio \(h) has order \(h.order)"); continue }
            if h.largeMapcountWord.load() != h.folioMapcountByPage {
                problems.append("device folio \(h): folio mapcount \(h.largeMapcountWord.load()) but its PMD and PTE mappings count \(h.folioMapcountByPage)")
            }
            for i in 1..<n {
                let t = page(pfn + i)
                if !t.test(.tail) || t.test(.head) || t.privateWord != pfn || t.order != 0 || t.kind != h.kind {
                    problems.append("device folio \(h): page \(t.pfn) is not its tail (half-split?)"); break
                }
                if t.refcount != 0 { problems.append("device folio \(h): tail \(t.pfn) has its own reference count"); break }
                if h.isAnon && h.refcount > 0 && (t.ownerBits & ~Page.ownerTagMask != h.ownerBits & ~Page.ownerTagMask || t.index != h.index + i) {
                    problems.append("device folio \(h): tail \(t.pfn) has another owner or index"); break
                }
            }
        }
        return problems
    }
}
