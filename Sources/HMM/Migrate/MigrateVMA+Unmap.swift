import MMCore
import MMSync

/// The phases shared by `MigrateVMA` and the VMA-less device eviction (`migrate_device_*`),
/// one file per phase as in `mm/migrate_device.c`: unmap (here), pages, finalize.
enum MigratePhases {}

extension MigratePhases {
    /// `migrate_vma_check_page`: only the references we expect (ours from collect, plus the
    /// fault's for the faulting page) may remain once every mapping is gone.
    static func checkPage(_ page: Page, faultPage: Page?) -> Bool {
        let extra: Int32 = 1 + (faultPage == page ? 1 : 0)
        return page.refcount - extra <= page.mapcount
    }

    /// `migrate_device_unmap`: pages still mapped elsewhere get migration entries too
    /// (`try_to_migrate`); pages that stay mapped or carry extra references (pins) lose MIGRATE
    /// and are restored, unlocked and released. Return: pages left to migrate, and per page
    /// whether it had mappings besides the one collect replaced (they became migration entries
    /// too; only an rmap walk finds them).
    @discardableResult
    static func unmap(_ machine: Machine, _ src: inout [UInt64], faultPage: Page?) -> (count: Int, remote: [Bool]) {
        let memory = machine.memory
        var unmapped = 0, restore = 0
        var remote = [Bool](repeating: false, count: src.count)
        for i in src.indices {
            guard let pfn = MigratePfn.pfn(src[i]) else {
                if src[i] & MigratePfn.migrate != 0 { unmapped += 1 }
                continue
            }
            let page = memory.page(pfn)
            if page.mapcount > 0 {
                remote[i] = true
                if let av = page.anonVMA { _ = machine.tryToMigrate(page, av: av, index: page.index) }
            }
            if page.mapcount > 0 || !checkPage(page, faultPage: faultPage) {
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
            machine.removeMigrationPTEs(from: page, to: page)
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
        (cpages, remote) = MigratePhases.unmap(vma.mm.machine, &src, faultPage: faultPage)
    }
}
