import MMCore
import MMSync

extension PhysicalMemory {
    /// `zone_device_page_init(page, pgmap, order)` (7.2): hands a free device page, or a free
    /// naturally aligned block of `1 << order` device pages, to its driver as one folio,
    /// referenced once and locked (as migration destinations must be). For order 9 the block
    /// becomes a large folio (`prep_compound_page`): the head carries the order, each tail
    /// names the head, the entire mapcount starts at 0. The driver's private word on the head
    /// is left for the driver to set.
    /// Precondition: every page of the block is free (no reference, no mapping).
    public func zoneDevicePageInit(_ page: Page, order: Int = 0) {
        precondition(order == 0 || order == pmdOrder, "device folio of order \(order)")
        let n = UInt64(1) << order
        precondition(page.pfn & (n - 1) == 0, "device folio at pfn \(page.pfn) not aligned to its order")
        // Reset what a previous use left (a free page usually has none of it: reads first,
        // writes only where needed, as this runs for every page a migration allocates).
        for i in 0..<n {
            let p = self.page(page.pfn + i)
            precondition(p.isZoneDevice && p.refcount == 0 && p.mapcount == 0, "device page \(p) is not free")
            if p.test([.head, .tail]) { p.clear([.head, .tail]) }
            if p.order != 0 { p.order = 0 }
            if p.ownerBits != 0 { p.ownerBits = 0 }
            if p.index != 0 { p.index = 0 }
            if i > 0 && p.privateWord != 0 { p.privateWord = 0 }
        }
        if order > 0 {
            page.entireMapcountWord.store(0)
            page.largeMapcountWord.store(0)
            for i in 1..<n {
                let t = self.page(page.pfn + i)
                t.privateWord = page.pfn
                t.set(.tail)
            }
            page.order = order
            page.set(.head)
            thp.noteFolioMade()
        }
        page.refcountWord.store(1)
        page.lock()
    }
}
