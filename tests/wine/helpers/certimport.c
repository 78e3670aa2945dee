/* tests/wine/e2e helper: imports a .pfx (certificate + private key) into
 * LocalMachine\My of the Wine prefix, or with /nokey only the certificate
 * (a .cer/.der file). Usage: certimport FILE.pfx PASSWORD | certimport /nokey FILE.der */
#include <windows.h>
#include <wincrypt.h>
#include <stdio.h>

static BYTE *slurp(const wchar_t *path, DWORD *len) {
    HANDLE f = CreateFileW(path, GENERIC_READ, FILE_SHARE_READ, NULL, OPEN_EXISTING, 0, NULL);
    if (f == INVALID_HANDLE_VALUE) return NULL;
    *len = GetFileSize(f, NULL);
    BYTE *buf = HeapAlloc(GetProcessHeap(), 0, *len);
    DWORD got = 0;
    ReadFile(f, buf, *len, &got, NULL);
    CloseHandle(f);
    return got == *len ? buf : NULL;
}

int wmain(int argc, wchar_t **argv) {
    if (argc != 3) { fwprintf(stderr, L"usage: certimport FILE.pfx PASSWORD | /nokey FILE.der\n"); return 2; }
    HCERTSTORE my = CertOpenStore(CERT_STORE_PROV_SYSTEM_W, 0, 0, CERT_SYSTEM_STORE_LOCAL_MACHINE, L"My");
    if (!my) { fwprintf(stderr, L"CertOpenStore LocalMachine\\My: %lu\n", GetLastError()); return 1; }
    DWORD len;
    int nokey = !wcscmp(argv[1], L"/nokey");
    BYTE *data = slurp(nokey ? argv[2] : argv[1], &len);
    if (!data) { fwprintf(stderr, L"cannot read the file: %lu\n", GetLastError()); return 1; }
    int added = 0;
    if (nokey) {
        added = CertAddEncodedCertificateToStore(my, X509_ASN_ENCODING, data, len, CERT_STORE_ADD_REPLACE_EXISTING, NULL);
    } else {
        CRYPT_DATA_BLOB blob = { len, data };
        HCERTSTORE pfx = PFXImportCertStore(&blob, argv[2], CRYPT_MACHINE_KEYSET | CRYPT_EXPORTABLE);
        if (!pfx) { fwprintf(stderr, L"PFXImportCertStore: %lu\n", GetLastError()); return 1; }
        PCCERT_CONTEXT c = NULL;
        while ((c = CertEnumCertificatesInStore(pfx, c)))
            added += CertAddCertificateContextToStore(my, c, CERT_STORE_ADD_REPLACE_EXISTING, NULL) ? 1 : 0;
        CertCloseStore(pfx, 0);
    }
    CertCloseStore(my, 0);
    if (!added) { fwprintf(stderr, L"nothing imported: %lu\n", GetLastError()); return 1; }
    wprintf(L"imported %d\n", added);
    return 0;
}
