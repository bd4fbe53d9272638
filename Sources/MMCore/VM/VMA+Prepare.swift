import MMSync

extension AddressSpace {
    /// `vma_prepare` … `vma_complete`: runs `body`, which changes `vma`'s bounds or page
    /// offset, with the rmap locks that cover the VMA held for write — its file's `i_mmap`,
    /// then its anon_vma tree's root. An rmap walk reads `start`, `end` and `pgoff` of the VMAs
    /// it visits under those locks for read (not the mmap lock), so it sees the VMA before the
    /// change or after it, never half of it.
    /// Locking: mmap lock held for write and `vma` write-locked (`vma_start_write`); takes
    /// `i_mmap` then the anon_vma root for write (no rmap lock may be held).
    func withVMAPrepared<T>(_ vma: VMA, _ body: () -> T) -> T {
        mmapLock.assertWriteLocked()
        let mapping = vma.file?.mappingLock
        let anon = vma.anonVMAChain.first?.lock
        mapping?.lockWrite()
        anon?.lockWrite()
        defer {
            anon?.unlockWrite()
            mapping?.unlockWrite()
        }
        return body()
    }
}
