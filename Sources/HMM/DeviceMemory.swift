import MMCore
import MMSync

extension PhysicalMemory {
    /// `zone_device_page_init`: hands a free device page to its driver, referenced once and
    /// locked (as migration destinations must be). Precondition: the page is free.
    public func zoneDevicePageInit(_ page: Page) {
        precondition(page.isZoneDevice && page.refcount == 0 && page.mapcount == 0, "device page \(page) is not free")
        page.refcountWord.store(1)
        page.lock()
    }
}
