import MMCore
import MMSync

/// The phases shared by `MigrateVMA` and the VMA-less device eviction (`migrate_device_*`),
/// one file per phase as in `mm/migrate_device.c`: unmap (here), pages, finalize.
enum MigratePhases {}

extension MigratePhases {
    /// `migrate_vma_check_page`: only the references we expect (ours from collect, plus the
    /// fault's for the faulting page, plus the swap cache's for a page in it) may remain once
    /// every mapping is gone. For a large folio, its reference count against all its mappings
    /// (PMD and PTE).
    static func checkPage(_ page: Page, faultPage: Page?) -> Bool {
        let extra: Int32 = 1 + (faultPage == page ? 1 : 0) + (page.test(.swapCache) ? 1 : 0)
        return page.refcount - extra <= page.folioMapcount
    }

    /// `migrate_device_unmap`: pages still mapped elsewhere get migration entries too
    /// (`try_to_migrate`; for a large folio its PMD mappings whole and its PTE mappings page
    /// by page); pages that stay mapped or carry extra references (pins) lose MIGRATE and are
    /// restored, unlocked and released. A large folio's entry gets COMPOUND and stands for
    /// all its pages (the entries after it are skipped). Return: entries left to migrate, and
    /// per entry whether it had mappings besides the one collect replaced (they became
    /// migration entries too; only an rmap walk finds them).
    @discardableResult
    static func unmap(_ machine: Machine, _ src: inout [UInt64], faultPage: Page?) -> (count: Int, remote: [Bool]) {
        let memory = machine.memory
        var unmapped = 0, restore = 0
        var remote = [Bool](repeating: false, count: src.count)
        var i = 0
        while i < src.count {
            var nr = 1
            defer { i += nr }
            guard let pfn = MigratePfn.pfn(src[i]) else {
                if src[i] & MigratePfn.migrate != 0 { unmapped += 1 }
                continue
            }
            let page = memory.page(pfn)
            let large = page.isInLargeFolio
            if large {
                nr = Int(page.folioPages)
                src[i] |= MigratePfn.compound
            }
            if large ? page.folioMapped : page.mapcount > 0 {
                remote[i] = true
                if let av = page.anonVMA {
                    if large {
                        _ = machine.tryToMigratePMDs(page, av: av, index: page.index)
                        if page.folioMapped { _ = machine.tryToMigrateFolioPTEs(page, av: av, index: page.index) }
                    } else {
                        _ = machine.tryToMigrate(page, av: av, index: page.index)
                    }
                }
            }
            if (large ? page.folioMapped : page.mapcount > 0) || !checkPage(page, faultPage: faultPage) {
                src[i] &= ~MigratePfn.migrate
                restore += 1
                continue
            }
            unmapped += 1
        }
        guard restore > 0 else { return (unmapped, remote) }
        for i in src.indices {
            guard let pfn = MigratePfn.pfn(src[i]), src[i] & MigratePfn.migrate == 0 else { continue }
            let page = memory.page(pfn)
            if page.isInLargeFolio, let av = page.anonVMA {
                machine.removeFolioMigrationEntries(from: page, to: page, av: av, index: page.index)
            } else {
                machine.removeMigrationPTEs(from: page, to: page)
            }
            src[i] = 0
            if page != faultPage { page.unlock() }
            memory.put(page)
        }
        return (unmapped, remote)
    }
}

extension MigrateVMA {
    /// `migrate_vma_unmap`.
    func unmap() {
        (cpages, remote) = MigratePhases.unmap(machine, &src, faultPage: faultPage)
    }
}
