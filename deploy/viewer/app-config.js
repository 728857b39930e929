/* OHIF 3.x configuration for viewing spinegate's results from Orthanc's
 * DICOMweb plugin, served from the same origin as the viewer (the web server
 * proxies /dicom-web and /wado to Orthanc, so no CORS is needed; the proxy
 * passes the browser's Host header on, from which Orthanc writes the absolute
 * BulkDataURIs OHIF's PDF viewport fetches).
 * Replace dist/app-config.js of the prebuilt @ohif/app package with this file. */
window.config = {
  routerBasename: '/',
  showStudyList: true,
  extensions: [],
  modes: [],
  // No first-visit tour (its overlay swallows clicks); load SEGs without asking.
  customizationService: [{ 'ohif.tours': { $set: [] } }],
  disableConfirmationPrompts: true,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  maxNumberOfWebWorkers: 2,
  defaultDataSourceName: 'orthanc',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'orthanc',
      configuration: {
        friendlyName: 'Orthanc (spinegate PACS)',
        name: 'orthanc',
        wadoUriRoot: window.location.origin + '/wado',
        qidoRoot: window.location.origin + '/dicom-web',
        wadoRoot: window.location.origin + '/dicom-web',
        qidoSupportsIncludeField: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        staticWado: false,
        omitQuotationForMultipartRequest: true,
        bulkDataURI: { enabled: true, relativeResolution: 'studies' },
      },
    },
  ],
};
